package testharness

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Versions of the downloaded components.
const (
	KafkaVersion = "4.1.1"
	log4jVersion = "2.24.3" // the Log4j version Kafka 4.1.1 depends on
)

// Component names accepted by Install.
const (
	CompPostgres = "postgres"
	CompMariaDB  = "mariadb"
	CompKafka    = "kafka"
	CompKcat     = "kcat"
	// CompOpenSearch is OpenSearch (opensearch.go): Java, and the
	// integ-test-zip from Maven Central unpacked into the cache dir.
	CompOpenSearch = "opensearch"
	// CompVersitygw is the versitygw S3 server (s3.go), built with go
	// install into <cache>/bin; CompDuckDB is npm @duckdb/node-api in the
	// cache dir (needs node and npm: Debian nodejs, npm).
	CompVersitygw = "versitygw"
	CompDuckDB    = "duckdb"
)

// AllComponents lists every component Install knows.
var AllComponents = []string{CompPostgres, CompMariaDB, CompKafka, CompKcat, CompOpenSearch, CompVersitygw, CompDuckDB}

// CacheDir returns the download cache: $PLUME_CACHE, or ~/.cache/plume.
func CacheDir() (string, error) {
	if d := os.Getenv("PLUME_CACHE"); d != "" {
		return d, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no $PLUME_CACHE and no home dir: %w", err)
	}
	return filepath.Join(home, ".cache", "plume"), nil
}

// Install makes sure the given components (all when none given) are present:
// missing Debian packages are installed with apt-get (postgresql-15,
// mariadb-server, kcat, and for Kafka and OpenSearch a JRE and Maven if
// java/mvn are missing), and the Kafka jars and the OpenSearch distribution
// are downloaded from Maven Central into the cache dir. It is idempotent and cheap when everything is present, and
// serialised across processes by a file lock in the cache dir.
func Install(ctx context.Context, components ...string) error {
	if len(components) == 0 {
		components = AllComponents
	}
	for _, c := range components {
		switch c {
		case CompPostgres, CompMariaDB, CompKafka, CompKcat, CompOpenSearch, CompVersitygw, CompDuckDB:
		default:
			return fmt.Errorf("testharness: unknown component %q", c)
		}
	}
	if installed(components) {
		return nil
	}
	cache, err := CacheDir()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return err
	}
	unlock, err := lockFile(ctx, filepath.Join(cache, ".install.lock"))
	if err != nil {
		return err
	}
	defer unlock()

	var pkgs []string
	for _, c := range components {
		if !installed([]string{c}) {
			pkgs = append(pkgs, aptPackages(c)...)
		}
	}
	if len(pkgs) > 0 {
		if err := aptInstall(ctx, pkgs...); err != nil {
			return err
		}
	}
	for _, c := range components {
		switch c {
		case CompPostgres:
			if _, err := postgresUser(); err != nil {
				return err
			}
		case CompKafka:
			if err := downloadKafka(ctx, cache); err != nil {
				return err
			}
		case CompOpenSearch:
			if _, err := openSearchUser(); err != nil {
				return err
			}
			if err := downloadOpenSearch(ctx, cache); err != nil {
				return err
			}
		case CompVersitygw:
			if err := installVersitygw(ctx, cache); err != nil {
				return err
			}
		case CompDuckDB:
			if err := installDuckDB(ctx); err != nil {
				return err
			}
		}
	}
	if !installed(components) {
		return fmt.Errorf("testharness: still missing after install: %s", strings.Join(missing(components), "; "))
	}
	return nil
}

// installed reports whether every component is usable without installing.
func installed(components []string) bool { return len(missing(components)) == 0 }

// missing describes what is lacking for each unusable component.
func missing(components []string) []string {
	var out []string
	for _, c := range components {
		var lack []string
		switch c {
		case CompPostgres:
			if p := filepath.Join(pgBinDir(), "postgres"); !fileExists(p) {
				lack = append(lack, p)
			}
			if os.Geteuid() == 0 && !userExists("postgres") {
				lack = append(lack, "OS user postgres")
			}
		case CompMariaDB:
			lack = append(lack, missingBins("mariadbd", "mariadb-install-db")...)
		case CompKcat:
			lack = append(lack, missingBins("kcat")...)
		case CompKafka:
			lack = append(lack, missingBins("java")...)
			if !kafkaDownloaded() {
				lack = append(lack, "Kafka "+KafkaVersion+" jars")
			}
		case CompOpenSearch:
			lack = append(lack, missingBins("java")...)
			if !openSearchDownloaded() {
				lack = append(lack, "OpenSearch "+OpenSearchVersion)
			}
			if os.Geteuid() == 0 && !userExists(openSearchOSUser) {
				lack = append(lack, "OS user "+openSearchOSUser)
			}
		case CompVersitygw:
			if !versitygwInstalled() {
				lack = append(lack, "versitygw "+VersitygwVersion)
			}
		case CompDuckDB:
			lack = append(lack, missingBins("node", "npm")...)
			if !duckdbInstalled() {
				lack = append(lack, "@duckdb/node-api "+DuckDBNodeAPI)
			}
		}
		if len(lack) > 0 {
			out = append(out, c+" (missing "+strings.Join(lack, ", ")+")")
		}
	}
	return out
}

func missingBins(names ...string) []string {
	var out []string
	for _, n := range names {
		if lookBin(n) == "" {
			out = append(out, n)
		}
	}
	return out
}

// aptPackages lists the Debian packages that provide what component c lacks.
func aptPackages(c string) []string {
	switch c {
	case CompPostgres:
		if !fileExists(filepath.Join(pgBinDir(), "postgres")) {
			return []string{"postgresql-15"}
		}
	case CompMariaDB:
		return []string{"mariadb-server"}
	case CompKcat:
		return []string{"kcat"}
	case CompKafka:
		var p []string
		if lookBin("java") == "" {
			p = append(p, "default-jre-headless")
		}
		if !kafkaDownloaded() && lookBin("mvn") == "" {
			p = append(p, "maven")
		}
		return p
	case CompOpenSearch:
		var p []string
		if lookBin("java") == "" {
			p = append(p, "default-jre-headless")
		}
		if !openSearchDownloaded() && lookBin("mvn") == "" {
			p = append(p, "maven")
		}
		return p
	case CompDuckDB:
		var p []string
		if lookBin("node") == "" {
			p = append(p, "nodejs")
		}
		if lookBin("npm") == "" {
			p = append(p, "npm")
		}
		return p
	}
	return nil
}

// lookBin finds a binary in $PATH or the sbin dirs, which root's PATH may lack.
func lookBin(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/usr/bin", "/sbin", "/usr/local/sbin", "/usr/local/bin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// aptInstall installs Debian packages, running apt-get update if the package
// lists are missing or stale enough that the install fails.
func aptInstall(ctx context.Context, pkgs ...string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("testharness: need Debian packages %v; run scripts/install-test-deps.sh as root (or install them)", pkgs)
	}
	if lookBin("apt-get") == "" {
		return fmt.Errorf("testharness: need packages %v but apt-get is not available", pkgs)
	}
	install := func() ([]byte, error) {
		args := append([]string{"-o", "DPkg::Lock::Timeout=600", "install", "-y", "-q", "--no-install-recommends"}, pkgs...)
		return aptGet(ctx, args...)
	}
	if _, err := install(); err == nil {
		return nil
	}
	// Most likely missing or stale package lists: update once and retry.
	if out, err := aptGet(ctx, "-o", "DPkg::Lock::Timeout=600", "update", "-q"); err != nil {
		return fmt.Errorf("testharness: apt-get update: %v\n%s", err, tail(out, 20))
	}
	if out, err := install(); err != nil {
		return fmt.Errorf("testharness: apt-get install %v: %v\n%s", pkgs, err, tail(out, 20))
	}
	return nil
}

func aptGet(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "apt-get", args...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	return cmd.CombinedOutput()
}

func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// lockFile takes an exclusive flock on path, polling so ctx can cancel.
func lockFile(ctx context.Context, path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() {
				_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
				f.Close()
			}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, fmt.Errorf("testharness: lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("testharness: waiting for install lock %s: %w", path, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func userExists(name string) bool {
	_, err := user.Lookup(name)
	return err == nil
}

// kafkaHome is where the Kafka jars live: <cache>/kafka-<version>, jars in libs/.
func kafkaHome() (string, error) {
	cache, err := CacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(cache, "kafka-"+KafkaVersion), nil
}

const kafkaMarker = ".complete"

func kafkaDownloaded() bool {
	home, err := kafkaHome()
	if err != nil {
		return false
	}
	_, err = os.Stat(filepath.Join(home, kafkaMarker))
	return err == nil
}

// kafkaPOM resolves the Kafka broker with its runtime dependencies. Kafka
// 4.1.1 uses SLF4J 1.7 and Log4j2 but declares no SLF4J binding; without
// log4j-slf4j-impl (the SLF4J 1.x binding; the slf4j2 one would be ignored
// by slf4j-api 1.7) the broker logs nothing.
const kafkaPOM = `<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>com.github.plumecdc.testharness</groupId>
  <artifactId>kafka-deps</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>` + KafkaVersion + `</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>` + log4jVersion + `</version>
    </dependency>
  </dependencies>
</project>
`

// downloadKafka fetches the Kafka jars with Maven into <cache>/kafka-<v>/libs,
// checks that the broker classes load, and writes the marker file. The Maven
// repository used is <cache>/m2 so the whole cache dir can be cached by CI.
func downloadKafka(ctx context.Context, cache string) error {
	if kafkaDownloaded() {
		return nil
	}
	mvn := lookBin("mvn")
	if mvn == "" {
		return errors.New("testharness: mvn not found; cannot download Kafka")
	}
	home, err := kafkaHome()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(home, 0o755); err != nil {
		return err
	}
	work, err := os.MkdirTemp(home, "download-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	if err := os.WriteFile(filepath.Join(work, "pom.xml"), []byte(kafkaPOM), 0o644); err != nil {
		return err
	}
	libs := filepath.Join(work, "libs")
	cmd := exec.CommandContext(ctx, mvn, "-q", "-B",
		"-Dmaven.repo.local="+filepath.Join(cache, "m2"),
		"dependency:copy-dependencies", "-DincludeScope=runtime", "-DoutputDirectory="+libs)
	cmd.Dir = work
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("testharness: downloading Kafka %s with Maven: %v\n%s", KafkaVersion, err, tail(out, 30))
	}
	// The classpath must load the broker and its Scala runtime.
	java := lookBin("java")
	if java == "" {
		return errors.New("testharness: java not found")
	}
	out, err := exec.CommandContext(ctx, java, "-cp", filepath.Join(libs, "*"), "kafka.tools.StorageTool", "random-uuid").CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) != 22 {
		return fmt.Errorf("testharness: downloaded Kafka jars do not work (%v):\n%s", err, tail(out, 30))
	}
	final := filepath.Join(home, "libs")
	if err := os.RemoveAll(final); err != nil {
		return err
	}
	if err := os.Rename(libs, final); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(home, kafkaMarker), []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o644)
}

// randomName returns a short random hex string.
func randomName(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
