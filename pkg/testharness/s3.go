package testharness

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Versions of the S3 server and the independent Parquet reader.
const (
	VersitygwVersion = "v1.8.0"
	DuckDBNodeAPI    = "1.5.6-r.1" // npm @duckdb/node-api
)

// S3Server is an ephemeral versitygw (S3-compatible) server on 127.0.0.1
// with a posix backend in a temp dir. Buckets are directories of Data.
type S3Server struct {
	Endpoint  string // http://127.0.0.1:PORT
	Region    string // us-east-1
	AccessKey string
	SecretKey string
	Port      int
	Data      string // the posix backend's root
	LogPath   string

	procServer // Start, Stop, Kill, Restart, Running
}

var sharedS3 sharedServer[*S3Server]

// S3 returns the versitygw server shared by the whole test binary, starting
// it on first use. If it cannot be started the test is skipped, or fails
// when CI=true.
func S3(t testing.TB) *S3Server {
	t.Helper()
	return sharedS3.get(t, "versitygw", newS3Server)
}

// NewS3 starts a versitygw server dedicated to t (to stop or kill it).
func NewS3(t testing.TB) *S3Server {
	t.Helper()
	return dedicated(t, "versitygw", newS3Server)
}

func (s *S3Server) listenPort() int { return s.Port }

func newS3Server() (*S3Server, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	if err := Install(ctx, CompVersitygw); err != nil {
		return nil, err
	}
	dir, err := mkTemp("s3")
	if err != nil {
		return nil, err
	}
	s := &S3Server{
		Region:    "us-east-1",
		AccessKey: "plume" + randomName(4),
		SecretKey: randomName(16),
		Data:      filepath.Join(dir, "data"),
		LogPath:   filepath.Join(dir, "versitygw.log"),
	}
	s.procServer = procServer{name: "versitygw", dir: dir, launch: s.launch}
	for _, d := range []string{s.Data, filepath.Join(dir, "iam")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	onExit(func() { s.close() })
	for attempt := 0; ; attempt++ {
		if s.Port, err = FreePort(); err != nil {
			return nil, err
		}
		s.Endpoint = "http://127.0.0.1:" + strconv.Itoa(s.Port)
		err = s.Start()
		if err == nil || attempt > 0 || !isPortClash(fileTail(s.LogPath, 30)) {
			return s, err
		}
	}
}

// launch starts versitygw and waits up to 30s until it answers.
func (s *S3Server) launch() (*proc, error) {
	bin, err := versitygwBin()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "--port", "127.0.0.1:"+strconv.Itoa(s.Port), "--iam-dir", filepath.Join(s.dir, "iam"), "posix", s.Data)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+s.AccessKey, "ROOT_SECRET_KEY="+s.SecretKey)
	return startServer("versitygw", cmd, s.LogPath, 30*time.Second, s.ping)
}

// ping expects any HTTP answer from the S3 API (an anonymous request is
// refused with 403, which proves the server is up).
func (s *S3Server) ping(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.Endpoint+"/", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// Bucket creates a bucket with a unique name and returns the name. With the
// posix backend a bucket is a directory of Data, so tests can also look at
// objects as files under filepath.Join(s.Data, bucket).
func (s *S3Server) Bucket(t testing.TB) string {
	t.Helper()
	name := "b" + strings.ToLower(randomName(6))
	if err := os.Mkdir(filepath.Join(s.Data, name), 0o755); err != nil {
		t.Fatalf("testharness: create bucket: %v", err)
	}
	return name
}

// versitygwBin is where Install puts versitygw: <cache>/bin/versitygw.
func versitygwBin() (string, error) {
	cache, err := CacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(cache, "bin", "versitygw"), nil
}

func versitygwInstalled() bool {
	bin, err := versitygwBin()
	if err != nil || !fileExists(bin) {
		return false
	}
	st, err := os.Stat(bin + ".version")
	if err != nil || st.Size() == 0 {
		return false
	}
	v, _ := os.ReadFile(bin + ".version")
	return strings.TrimSpace(string(v)) == VersitygwVersion
}

// installVersitygw builds versitygw with `go install` into <cache>/bin.
func installVersitygw(ctx context.Context, cache string) error {
	if versitygwInstalled() {
		return nil
	}
	gobin := filepath.Join(cache, "bin")
	if err := os.MkdirAll(gobin, 0o755); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, goTool(), "install", "github.com/versity/versitygw/cmd/versitygw@"+VersitygwVersion)
	cmd.Env = append(os.Environ(), "GOBIN="+gobin, "GOFLAGS=-mod=mod")
	cmd.Dir = os.TempDir() // outside any module
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("testharness: go install versitygw@%s: %v\n%s", VersitygwVersion, err, tail(out, 30))
	}
	return os.WriteFile(filepath.Join(gobin, "versitygw.version"), []byte(VersitygwVersion+"\n"), 0o644)
}

//go:embed reader/duckdb-query.mjs
var duckdbQueryScript []byte

// duckdbDir is where Install puts @duckdb/node-api: <cache>/duckdb-node.
func duckdbDir() (string, error) {
	cache, err := CacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(cache, "duckdb-node-"+DuckDBNodeAPI), nil
}

func duckdbInstalled() bool {
	dir, err := duckdbDir()
	return err == nil && fileExists(filepath.Join(dir, ".complete")) && lookBin("node") != ""
}

// installDuckDB installs @duckdb/node-api (it ships DuckDB's native library,
// Parquet reader included) with npm into the cache dir.
func installDuckDB(ctx context.Context) error {
	if duckdbInstalled() {
		return nil
	}
	dir, err := duckdbDir()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "package.json"), []byte(`{"name":"plume-testharness-duckdb","private":true,"type":"module"}`+"\n"), 0o644); err != nil {
		return err
	}
	npm := lookBin("npm")
	if npm == "" {
		return errors.New("testharness: npm not found")
	}
	cmd := exec.CommandContext(ctx, npm, "install", "--no-audit", "--no-fund", "--save-exact", "@duckdb/node-api@"+DuckDBNodeAPI)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("testharness: npm install @duckdb/node-api@%s: %v\n%s", DuckDBNodeAPI, err, tail(out, 30))
	}
	return os.WriteFile(filepath.Join(dir, ".complete"), []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o644)
}

// DuckDBQuery runs one SQL query in DuckDB (through node and
// @duckdb/node-api, an independent reader of Parquet files) and returns the
// rows as JSON objects: DuckDB's JSON rendering of each value (decimals,
// big integers, timestamps and dates as strings; BLOBs as escaped text).
// The test is skipped (failed with CI=true) when DuckDB cannot be installed.
func DuckDBQuery(t testing.TB, query string) []map[string]any {
	t.Helper()
	rows, err := duckdbQuery(t, query)
	if err != nil {
		t.Fatalf("duckdb: %v", err)
	}
	return rows
}

var duckdbInstall struct {
	once sync.Once
	err  error
}

func duckdbQuery(t testing.TB, query string) ([]map[string]any, error) {
	duckdbInstall.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		duckdbInstall.err = Install(ctx, CompDuckDB)
	})
	if duckdbInstall.err != nil {
		unavailable(t, "DuckDB (node)", duckdbInstall.err)
	}
	dir, err := duckdbDir()
	if err != nil {
		return nil, err
	}
	script := filepath.Join(dir, "duckdb-query.mjs")
	if cur, err := os.ReadFile(script); err != nil || !bytes.Equal(cur, duckdbQueryScript) {
		if err := os.WriteFile(script, duckdbQueryScript, 0o644); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, lookBin("node"), script)
	cmd.Stdin = strings.NewReader(query)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%v: %s\nquery: %s", err, strings.TrimSpace(stderr.String()), query)
	}
	var rows []map[string]any
	dec := json.NewDecoder(&stdout)
	dec.UseNumber()
	if err := dec.Decode(&rows); err != nil {
		return nil, fmt.Errorf("decode DuckDB output: %v", err)
	}
	return rows, nil
}
