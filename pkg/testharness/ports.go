package testharness

import (
	"net"
	"strings"
)

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago. Another
// process may grab it before it is used; servers retry once with new ports
// when their first start fails with an address-in-use error.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// freePorts returns n distinct free ports.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// isPortClash reports whether a server log says it could not bind its port.
func isPortClash(log string) bool {
	for _, s := range []string{"Address already in use", "BindException", "could not bind", "Do you already have another server running"} {
		if strings.Contains(log, s) {
			return true
		}
	}
	return false
}
