package postgres

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/plumecdc/plume/pkg/testharness"
)

// testCA makes a CA and a server certificate for 127.0.0.1/localhost.
func testCA(t *testing.T) (caPEM, certPEM, keyPEM []byte) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "plume test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}

// TestTLS streams over TLS, once with sslmode=verify-full in the DSN and
// once with Config.TLS overriding sslmode=disable; a wrong CA fails.
func TestTLS(t *testing.T) {
	pg := testharness.NewPostgres(t)
	caPEM, certPEM, keyPEM := testCA(t)
	st, err := os.Stat(pg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	uid, gid := int(st.Sys().(*syscall.Stat_t).Uid), int(st.Sys().(*syscall.Stat_t).Gid)
	for name, b := range map[string][]byte{"server.crt": certPEM, "server.key": keyPEM} {
		p := filepath.Join(pg.DataDir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	pg.Exec(t, "postgres", `ALTER SYSTEM SET ssl = on`)
	pg.Exec(t, "postgres", `SELECT pg_reload_conf()`)
	waitFor(t, 10*time.Second, "ssl on", func() bool { return pg.QueryValue(t, "postgres", `SHOW ssl`) == "on" })
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	pg.Exec(t, "postgres", `CREATE TABLE t (id int PRIMARY KEY)`)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)

	base := fmt.Sprintf("postgres://%s@127.0.0.1:%d/postgres", pg.User, pg.Port)
	cases := []struct {
		name string
		dsn  string
		tls  *tls.Config
	}{
		{"verify-full DSN", base + "?sslmode=verify-full&sslrootcert=" + caFile, nil},
		{"Config.TLS", base + "?sslmode=disable", &tls.Config{RootCAs: pool}},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := testConfig(pg, "postgres", fmt.Sprintf("tls-%d", i), "public.t")
			cfg.DSN, cfg.TLS = c.dsn, c.tls
			src := newSource(t, cfg)
			rec := newRecorder(src, true)
			r := startRun(t, src, nil, rec)
			waitStreaming(t, pg, "postgres", r)
			pg.Exec(t, "postgres", fmt.Sprintf(`INSERT INTO t VALUES (%d)`, i))
			waitFor(t, 30*time.Second, "change", func() bool { return len(rec.changes()) == 1 })
			ssl := pg.QueryValue(t, "postgres", `SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s ON s.pid = r.pid
				JOIN pg_replication_slots sl ON sl.active_pid = r.pid WHERE sl.slot_name = $1`, src.slot)
			if ssl != "true" {
				t.Errorf("replication connection ssl = %s", ssl)
			}
			if err := r.stop(); err != nil {
				t.Fatal(err)
			}
			if err := Drop(t.Context(), cfg); err != nil {
				t.Fatal(err)
			}
		})
	}

	// A CA that did not sign the server certificate is refused.
	otherCA, _, _ := testCA(t)
	badPool := x509.NewCertPool()
	badPool.AppendCertsFromPEM(otherCA)
	cfg := testConfig(pg, "postgres", "tls-bad", "public.t")
	cfg.TLS = &tls.Config{RootCAs: badPool}
	err = runOnce(t, cfg, nil)
	wantErr(t, err, "127.0.0.1", "certificate")
}
