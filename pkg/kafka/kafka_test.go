package kafka

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/plumecdc/plume/pkg/testharness"
)

func TestMain(m *testing.M) { testharness.Main(m) }

// roundTrip creates a topic, produces one record and reads it back.
func roundTrip(t *testing.T, cc ClientConfig) error {
	t.Helper()
	opts, err := cc.Opts()
	if err != nil {
		return err
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	topic := "rt-" + cc.Compression + cc.SASLMechanism
	if err := EnsureTopics(ctx, kadm.NewClient(cl), TopicSpec{Partitions: 2}, topic); err != nil {
		return err
	}
	// Creating it again is not an error.
	if err := EnsureTopics(ctx, kadm.NewClient(cl), TopicSpec{Partitions: 2}, topic); err != nil {
		return err
	}
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Key: []byte("k"), Value: []byte("hello")}).FirstErr(); err != nil {
		return err
	}
	rd, err := kgo.NewClient(append(opts, kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))...)
	if err != nil {
		return err
	}
	defer rd.Close()
	fs := rd.PollFetches(ctx)
	if err := fs.Err0(); err != nil {
		return err
	}
	if fs.NumRecords() != 1 || string(fs.Records()[0].Value) != "hello" {
		t.Fatalf("read back %d records", fs.NumRecords())
	}
	return nil
}

func TestCompressionCodecs(t *testing.T) {
	c := testharness.Kfake(t)
	for _, codec := range []string{"none", "gzip", "snappy", "lz4", "zstd"} {
		if err := roundTrip(t, ClientConfig{Brokers: c.ListenAddrs(), Compression: codec}); err != nil {
			t.Errorf("%s: %v", codec, err)
		}
	}
	if _, err := (ClientConfig{Brokers: []string{"x"}, Compression: "brotli"}).Opts(); err == nil {
		t.Error("unknown codec accepted")
	}
}

func TestSASLMechanisms(t *testing.T) {
	c := testharness.Kfake(t, kfake.EnableSASL(),
		kfake.Superuser("PLAIN", "plume", "pw-plain"),
		kfake.Superuser("SCRAM-SHA-256", "plume", "pw-256"),
		kfake.Superuser("SCRAM-SHA-512", "plume", "pw-512"))
	for mech, pw := range map[string]string{"PLAIN": "pw-plain", "SCRAM-SHA-256": "pw-256", "SCRAM-SHA-512": "pw-512"} {
		if err := roundTrip(t, ClientConfig{Brokers: c.ListenAddrs(), SASLMechanism: mech, SASLUser: "plume", SASLPassword: pw}); err != nil {
			t.Errorf("%s: %v", mech, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	opts, _ := ClientConfig{Brokers: c.ListenAddrs(), SASLMechanism: "PLAIN", SASLUser: "plume", SASLPassword: "wrong"}.Opts()
	cl, _ := kgo.NewClient(opts...)
	defer cl.Close()
	if err := cl.Ping(ctx); err == nil {
		t.Error("a wrong password was accepted")
	}
}

func TestEmbeddedBrokerTakesNextFreePortAndPersists(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	port := busy.Addr().(*net.TCPAddr).Port
	dir := t.TempDir()
	e, err := StartEmbedded(dir, "127.0.0.1:"+strconv.Itoa(port), log)
	if err != nil {
		t.Fatal(err)
	}
	if e.Addr() == busy.Addr().String() {
		t.Fatalf("took a busy port")
	}
	cc := ClientConfig{Brokers: []string{e.Addr()}}
	opts, _ := cc.Opts()
	cl, _ := kgo.NewClient(opts...)
	ctx := context.Background()
	if err := EnsureTopics(ctx, kadm.NewClient(cl), TopicSpec{}, "persist"); err != nil {
		t.Fatal(err)
	}
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "persist", Value: []byte("survives")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	cl.Close()
	e.Close()

	e2, err := StartEmbedded(dir, "127.0.0.1:"+strconv.Itoa(port), log)
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Close()
	opts, _ = ClientConfig{Brokers: []string{e2.Addr()}}.Opts()
	rd, _ := kgo.NewClient(append(opts, kgo.ConsumeTopics("persist"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))...)
	defer rd.Close()
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	fs := rd.PollFetches(pctx)
	if fs.NumRecords() != 1 || string(fs.Records()[0].Value) != "survives" {
		t.Fatalf("after restart read %d records: %v", fs.NumRecords(), fs.Err0())
	}
}

// TestTLSWithCustomCA: the client verifies the broker against a CA from a
// file (as kafka.tls.ca_file configures it) and refuses an unknown one.
func TestTLSWithCustomCA(t *testing.T) {
	caPEM, serverCfg := selfSignedTLS(t)
	c := testharness.Kfake(t, kfake.TLS(serverCfg))
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("bad CA PEM")
	}
	good := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	if err := roundTrip(t, ClientConfig{Brokers: c.ListenAddrs(), TLS: good}); err != nil {
		t.Fatalf("TLS round trip: %v", err)
	}
	opts, _ := ClientConfig{Brokers: c.ListenAddrs(), TLS: &tls.Config{RootCAs: x509.NewCertPool(), MinVersion: tls.VersionTLS12}}.Opts()
	cl, _ := kgo.NewClient(opts...)
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := cl.Ping(ctx); err == nil {
		t.Fatal("a broker certificate from an unknown CA was accepted")
	}
}

// selfSignedTLS makes a CA and a server certificate for 127.0.0.1.
func selfSignedTLS(t *testing.T) ([]byte, *tls.Config) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "plume test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "broker"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
}
