package testharness

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// KafkaServer is a real single-node Apache Kafka 4.1.1 broker+controller in
// KRaft mode, with replication factors of 1 for internal topics (so
// transactions and consumer groups work) and auto topic creation on.
type KafkaServer struct {
	Host           string // always 127.0.0.1
	Port           int    // PLAINTEXT listener
	ControllerPort int    // CONTROLLER listener
	DataDir        string // log.dirs
	LogPath        string // broker log (Log4j2 to stdout)

	procServer // Start, Stop, Kill, Restart, Running
}

var sharedKafka sharedServer[*KafkaServer]

// Kafka returns the Kafka broker shared by the whole test binary, starting
// it on first use (and again if a test left it stopped). Tests should use
// unique topic and group names. If it cannot be started the test is
// skipped, or fails when CI=true.
func Kafka(t testing.TB) *KafkaServer {
	t.Helper()
	return sharedKafka.get(t, "Kafka", newKafka)
}

// NewKafka starts a Kafka broker dedicated to t and removes it at
// t.Cleanup. Use it for tests that stop, kill or restart the broker.
func NewKafka(t testing.TB) *KafkaServer {
	t.Helper()
	return dedicated(t, "Kafka", newKafka)
}

func (k *KafkaServer) listenPort() int { return k.Port }

func newKafka() (*KafkaServer, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	if err := Install(ctx, CompKafka); err != nil {
		return nil, err
	}
	dir, err := mkTemp("kafka")
	if err != nil {
		return nil, err
	}
	k := &KafkaServer{
		Host:    "127.0.0.1",
		DataDir: filepath.Join(dir, "data"),
		LogPath: filepath.Join(dir, "kafka.log"),
	}
	k.procServer = procServer{name: "Kafka", dir: dir, launch: k.launch}
	onExit(func() { k.close() })
	for attempt := 0; ; attempt++ {
		ports, err := freePorts(2)
		if err != nil {
			return nil, err
		}
		k.Port, k.ControllerPort = ports[0], ports[1]
		if err := k.configure(ctx); err != nil {
			return nil, err
		}
		err = k.Start()
		if err == nil || attempt > 0 || !isPortClash(err.Error()) {
			return k, err
		}
	}
}

const kafkaLog4j = `status = warn
appender.out.type = Console
appender.out.name = out
appender.out.target = SYSTEM_OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = out
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
`

// configure writes server.properties and log4j2.properties and formats the
// (empty) data dir.
func (k *KafkaServer) configure(ctx context.Context) error {
	props := map[string]string{
		"process.roles":                                    "broker,controller",
		"node.id":                                          "1",
		"controller.quorum.voters":                         fmt.Sprintf("1@127.0.0.1:%d", k.ControllerPort),
		"listeners":                                        fmt.Sprintf("PLAINTEXT://127.0.0.1:%d,CONTROLLER://127.0.0.1:%d", k.Port, k.ControllerPort),
		"advertised.listeners":                             fmt.Sprintf("PLAINTEXT://127.0.0.1:%d", k.Port),
		"controller.listener.names":                        "CONTROLLER",
		"inter.broker.listener.name":                       "PLAINTEXT",
		"listener.security.protocol.map":                   "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
		"log.dirs":                                         k.DataDir,
		"num.partitions":                                   "1",
		"offsets.topic.replication.factor":                 "1",
		"offsets.topic.num.partitions":                     "5",
		"transaction.state.log.replication.factor":         "1",
		"transaction.state.log.min.isr":                    "1",
		"transaction.state.log.num.partitions":             "5",
		"share.coordinator.state.topic.replication.factor": "1",
		"share.coordinator.state.topic.min.isr":            "1",
		"group.initial.rebalance.delay.ms":                 "0",
		"auto.create.topics.enable":                        "true",
		// After a crash the restarted broker cannot register until its old
		// session expires (default 9s).
		"broker.session.timeout.ms":    "4000",
		"broker.heartbeat.interval.ms": "1000",
	}
	var b strings.Builder
	for _, key := range sortedKeys(props) {
		fmt.Fprintf(&b, "%s=%s\n", key, props[key])
	}
	if err := os.WriteFile(k.configPath(), []byte(b.String()), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(k.dir, "log4j2.properties"), []byte(kafkaLog4j), 0o644); err != nil {
		return err
	}
	if err := os.RemoveAll(k.DataDir); err != nil {
		return err
	}
	cmd, err := k.javaCmd(ctx, "kafka.tools.StorageTool", "format", "-t", kafkaClusterID(), "-c", k.configPath())
	if err != nil {
		return err
	}
	if err := runLogged(cmd, filepath.Join(k.dir, "format.log")); err != nil {
		return fmt.Errorf("formatting Kafka storage: %w", err)
	}
	return nil
}

func (k *KafkaServer) configPath() string { return filepath.Join(k.dir, "server.properties") }

// javaCmd builds a java command running mainClass with the Kafka classpath.
func (k *KafkaServer) javaCmd(ctx context.Context, mainClass string, args ...string) (*exec.Cmd, error) {
	java := lookBin("java")
	if jh := os.Getenv("JAVA_HOME"); jh != "" {
		if _, err := os.Stat(filepath.Join(jh, "bin", "java")); err == nil {
			java = filepath.Join(jh, "bin", "java")
		}
	}
	if java == "" {
		return nil, errors.New("java not found")
	}
	home, err := kafkaHome()
	if err != nil {
		return nil, err
	}
	jvm := []string{
		"-Xmx512m", "-Xms128m",
		"-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
		"-XX:+ExitOnOutOfMemoryError",
		"-Djava.awt.headless=true",
		"-Dkafka.logs.dir=" + filepath.Join(k.dir, "logs"),
		"-Dlog4j2.configurationFile=" + filepath.Join(k.dir, "log4j2.properties"),
		"-cp", filepath.Join(home, "libs", "*"),
		mainClass,
	}
	return exec.CommandContext(ctx, java, append(jvm, args...)...), nil
}

// kafkaClusterID returns a random Kafka Uuid in its base64 form, avoiding a
// leading '-' as Kafka's own generator does (it would parse as a flag).
func kafkaClusterID() string {
	for {
		b := make([]byte, 16)
		_, _ = rand.Read(b)
		if s := base64.RawURLEncoding.EncodeToString(b); s[0] != '-' {
			return s
		}
	}
}

// launch starts the broker and waits up to 120s until a client can fetch
// metadata.
func (k *KafkaServer) launch() (*proc, error) {
	cmd, err := k.javaCmd(context.Background(), "kafka.Kafka", k.configPath())
	if err != nil {
		return nil, err
	}
	return startServer("Kafka", cmd, k.LogPath, 120*time.Second, k.ping)
}

// ping succeeds when the broker answers a metadata request listing itself
// and an active controller.
func (k *KafkaServer) ping(ctx context.Context) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.Brokers()...), kgo.DialTimeout(2*time.Second),
		kgo.RequestRetries(0), kgo.RetryTimeout(time.Second))
	if err != nil {
		return err
	}
	defer cl.Close()
	req := kmsg.NewPtrMetadataRequest()
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		return err
	}
	if len(resp.Brokers) == 0 || resp.ControllerID < 0 {
		return fmt.Errorf("metadata lists %d brokers, controller %d", len(resp.Brokers), resp.ControllerID)
	}
	return nil
}

// Brokers returns the seed broker addresses.
func (k *KafkaServer) Brokers() []string {
	return []string{net.JoinHostPort(k.Host, strconv.Itoa(k.Port))}
}

// KafkaClient returns a franz-go client for brokers (a KafkaServer's or a
// kfake cluster's), closed at t.Cleanup.
func KafkaClient(t testing.TB, brokers []string, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...)}, opts...)...)
	if err != nil {
		t.Fatalf("testharness: kafka client: %v", err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// CreateTopic creates a topic with the given partition count (replication
// factor: the broker default), failing t on error.
func CreateTopic(t testing.TB, brokers []string, topic string, partitions int32) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatalf("testharness: kafka client: %v", err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := kadm.NewClient(cl).CreateTopic(ctx, partitions, -1, nil, topic)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		t.Fatalf("testharness: create topic %s: %v", topic, err)
	}
}
