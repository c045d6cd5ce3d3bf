package kafka

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/twmb/franz-go/pkg/kfake"
)

// Embedded is the in-process Kafka-compatible broker (franz-go's kfake) that
// Plume runs when the pipeline names no brokers. Its log lives under the
// pipeline's state_dir and every write is fsynced, so a committed
// transaction survives a crash of the process.
type Embedded struct {
	cluster *kfake.Cluster
	addr    string
}

// maxPortProbe bounds how far past the requested port StartEmbedded looks
// for a free one.
const maxPortProbe = 20

// StartEmbedded starts the broker with its data in dir, listening on listen
// ("127.0.0.1:9092" by default). When that port is taken it tries the next
// ones, up to maxPortProbe, and logs the address it got.
func StartEmbedded(dir, listen string, log *slog.Logger) (*Embedded, error) {
	if listen == "" {
		listen = "127.0.0.1:9092"
	}
	host, portStr, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("embedded broker: listen address %q: %w", listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("embedded broker: listen port %q: %w", portStr, err)
	}
	listenFn := func(network, _ string) (net.Listener, error) {
		return net.Listen(network, net.JoinHostPort(host, strconv.Itoa(port)))
	}
	var lastErr error
	for i := 0; i <= maxPortProbe; i++ {
		c, err := kfake.NewCluster(
			kfake.NumBrokers(1),
			kfake.Ports(port),
			kfake.ListenFn(listenFn),
			kfake.DataDir(filepath.Join(dir, "broker")),
			kfake.SyncWrites(),
			kfake.ClusterID("plume-embedded"),
			kfake.BrokerConfigs(map[string]string{
				// Allow transactions as long as a real cluster's default maximum.
				"transaction.max.timeout.ms": "900000",
			}),
		)
		if err == nil {
			e := &Embedded{cluster: c, addr: c.ListenAddrs()[0]}
			log.Info("embedded Kafka broker listening", "addr", e.addr, "data_dir", filepath.Join(dir, "broker"))
			return e, nil
		}
		lastErr = err
		if !errors.Is(err, syscall.EADDRINUSE) || port == 0 {
			break
		}
		log.Debug("embedded broker port taken, trying the next", "port", port)
		port++
	}
	return nil, fmt.Errorf("embedded broker: cannot listen on %s: %w", listen, lastErr)
}

// Addr returns host:port of the broker.
func (e *Embedded) Addr() string { return e.addr }

// Cluster exposes kfake for tests that inject faults.
func (e *Embedded) Cluster() *kfake.Cluster { return e.cluster }

// Close stops the broker and flushes its data.
func (e *Embedded) Close() { e.cluster.Close() }
