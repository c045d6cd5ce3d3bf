package testharness

import (
	"archive/zip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// OpenSearchVersion is the OpenSearch release the harness runs: the last 2.x
// line, which runs on Java 17 (3.x needs Java 21).
const OpenSearchVersion = "2.19.2"

// openSearchArtifact is the distribution on Maven Central: the
// "integ-test-zip" (Apache-2.0, HTTP only, no security plugin, no bundled
// JDK).
const openSearchArtifact = "org.opensearch.distribution.integ-test-zip:opensearch:" + OpenSearchVersion + ":zip"

// openSearchOSUser runs the server when the tests run as root: OpenSearch
// refuses to run as root.
const openSearchOSUser = "plume-opensearch"

// OpenSearchServer is a real single-node OpenSearch 2.x (from the
// integ-test-zip) listening on 127.0.0.1:Port over plain HTTP: no security
// plugin, 512 MiB heap, disk watermarks off (a full CI disk must not turn
// indexes read-only), data kept across Stop/Start/Restart.
type OpenSearchServer struct {
	Host    string // always 127.0.0.1
	Port    int    // HTTP
	DataDir string // path.data
	LogPath string // server output (stdout and stderr)

	home          string // the instance's copy of the distribution
	transportPort int
	cred          *syscall.Credential // nil when not running as root

	procServer // Start, Stop, Kill, Restart, Running
}

var sharedOpenSearch sharedServer[*OpenSearchServer]

// OpenSearch returns the OpenSearch server shared by the whole test binary,
// starting it on first use (and again if a test left it stopped). Tests
// should use unique index names (UniqueName). If it cannot be started the
// test is skipped, or fails when CI=true.
func OpenSearch(t testing.TB) *OpenSearchServer {
	t.Helper()
	return sharedOpenSearch.get(t, "OpenSearch", newOpenSearch)
}

// NewOpenSearch starts an OpenSearch server dedicated to t and removes it at
// t.Cleanup. Use it for tests that stop, kill or restart the server.
func NewOpenSearch(t testing.TB) *OpenSearchServer {
	t.Helper()
	return dedicated(t, "OpenSearch", newOpenSearch)
}

func (o *OpenSearchServer) listenPort() int { return o.Port }

// URL returns "http://127.0.0.1:PORT".
func (o *OpenSearchServer) URL() string {
	return "http://" + net.JoinHostPort(o.Host, strconv.Itoa(o.Port))
}

func newOpenSearch() (*OpenSearchServer, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	if err := Install(ctx, CompOpenSearch); err != nil {
		return nil, err
	}
	cred, err := openSearchUser()
	if err != nil {
		return nil, err
	}
	dist, err := openSearchHome()
	if err != nil {
		return nil, err
	}
	dir, err := mkTemp("opensearch")
	if err != nil {
		return nil, err
	}
	o := &OpenSearchServer{
		Host:    "127.0.0.1",
		DataDir: filepath.Join(dir, "data"),
		LogPath: filepath.Join(dir, "opensearch.log"),
		home:    filepath.Join(dir, "home"),
		cred:    cred,
	}
	o.procServer = procServer{name: "OpenSearch", dir: dir, launch: o.launch}
	// The cache dir is usually under /root (mode 0700), out of the server
	// user's reach: each instance runs from its own copy (hard links when
	// the file system allows, so it costs nothing).
	if err := linkTree(filepath.Join(dist, "opensearch-"+OpenSearchVersion), o.home); err != nil {
		return nil, fmt.Errorf("copying OpenSearch into %s: %w", o.home, err)
	}
	if err := o.configure(); err != nil {
		return nil, err
	}
	onExit(func() { o.close() })
	for attempt := 0; ; attempt++ {
		ports, err := freePorts(2)
		if err != nil {
			return nil, err
		}
		o.Port, o.transportPort = ports[0], ports[1]
		err = o.Start()
		if err == nil || attempt > 0 || !isPortClash(err.Error()) {
			return o, err
		}
	}
}

// configure writes the instance's config dir (jvm.options without the
// distribution's heap and GC-log lines, the log4j2 config, an empty
// opensearch.yml: settings come as -E flags) and hands the instance dir to
// the server user.
func (o *OpenSearchServer) configure() error {
	conf := filepath.Join(o.dir, "config")
	for _, d := range []string{conf, o.DataDir, filepath.Join(o.dir, "logs"), filepath.Join(o.dir, "tmp")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	jvm, err := os.ReadFile(filepath.Join(o.home, "config", "jvm.options"))
	if err != nil {
		return err
	}
	var b strings.Builder
	for _, line := range strings.Split(string(jvm), "\n") {
		l := strings.TrimSpace(line)
		if strings.HasPrefix(l, "-Xms") || strings.HasPrefix(l, "-Xmx") || strings.Contains(l, "gc.log") ||
			strings.Contains(l, "HeapDumpPath") || strings.Contains(l, "ErrorFile") {
			continue
		}
		b.WriteString(line + "\n")
	}
	b.WriteString("-Xms512m\n-Xmx512m\n-XX:+ExitOnOutOfMemoryError\n")
	if err := os.WriteFile(filepath.Join(conf, "jvm.options"), []byte(b.String()), 0o644); err != nil {
		return err
	}
	log4j, err := os.ReadFile(filepath.Join(o.home, "config", "log4j2.properties"))
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(conf, "log4j2.properties"), log4j, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(conf, "opensearch.yml"), nil, 0o644); err != nil {
		return err
	}
	if o.cred == nil {
		return nil
	}
	return filepath.Walk(o.dir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if p == o.home || strings.HasPrefix(p, o.home+string(filepath.Separator)) {
			if info.IsDir() {
				return filepath.SkipDir // read-only for the server
			}
			return nil
		}
		return os.Lchown(p, int(o.cred.Uid), int(o.cred.Gid))
	})
}

// launch starts the server and waits up to 180s until the cluster is at
// least yellow.
func (o *OpenSearchServer) launch() (*proc, error) {
	javaHome, err := openSearchJavaHome()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(filepath.Join(o.home, "bin", "opensearch"),
		"-Ediscovery.type=single-node",
		"-Enetwork.host=127.0.0.1",
		"-Ehttp.port="+strconv.Itoa(o.Port),
		"-Etransport.port="+strconv.Itoa(o.transportPort),
		"-Epath.data="+o.DataDir,
		"-Epath.logs="+filepath.Join(o.dir, "logs"),
		"-Ecluster.name=plume-test-"+strconv.Itoa(o.Port),
		"-Enode.name=node-1",
		"-Ecluster.routing.allocation.disk.threshold_enabled=false",
		"-Eaction.destructive_requires_name=false",
	)
	cmd.Dir = o.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: o.cred}
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "JAVA_") || strings.HasPrefix(kv, "OPENSEARCH_") || strings.HasPrefix(kv, "ES_") {
			continue
		}
		env = append(env, kv)
	}
	cmd.Env = append(env,
		"OPENSEARCH_JAVA_HOME="+javaHome,
		"OPENSEARCH_PATH_CONF="+filepath.Join(o.dir, "config"),
		"OPENSEARCH_TMPDIR="+filepath.Join(o.dir, "tmp"),
	)
	return startServer("OpenSearch", cmd, o.LogPath, 180*time.Second, o.ping)
}

// ping succeeds when the cluster health is yellow or green.
func (o *OpenSearchServer) ping(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, o.URL()+"/_cluster/health?wait_for_status=yellow&timeout=2s", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var h struct {
		Status string `json:"status"`
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("cluster health: HTTP %d: %s", resp.StatusCode, body)
	}
	if err := json.Unmarshal(body, &h); err != nil {
		return err
	}
	if h.Status != "green" && h.Status != "yellow" {
		return fmt.Errorf("cluster health is %q", h.Status)
	}
	return nil
}

// openSearchUser returns the credential to run OpenSearch with: nil when
// not root, otherwise the OS user plume-opensearch, created if missing.
func openSearchUser() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup(openSearchOSUser)
	if err != nil {
		out, err2 := exec.Command(lookBin("useradd"), "--system", "--user-group", "--no-create-home",
			"--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", openSearchOSUser).CombinedOutput()
		if err2 != nil {
			return nil, fmt.Errorf("creating OS user %s: %v: %s", openSearchOSUser, err2, out)
		}
		if u, err = user.Lookup(openSearchOSUser); err != nil {
			return nil, err
		}
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// openSearchJavaHome returns the JDK to run OpenSearch with:
// $PLUME_OPENSEARCH_JAVA_HOME, else the java on PATH (symlinks resolved).
// OpenSearch 2.x needs Java 11 to 21 (it uses the security manager, gone in
// Java 24), so a JAVA_HOME meant for other tools is not used.
func openSearchJavaHome() (string, error) {
	if h := os.Getenv("PLUME_OPENSEARCH_JAVA_HOME"); h != "" {
		return h, nil
	}
	java := lookBin("java")
	if java == "" {
		return "", errors.New("testharness: java not found")
	}
	real, err := filepath.EvalSymlinks(java)
	if err != nil {
		return "", err
	}
	return filepath.Dir(filepath.Dir(real)), nil
}

// openSearchHome is where the distribution is unpacked:
// <cache>/opensearch-<version>/opensearch-<version>.
func openSearchHome() (string, error) {
	cache, err := CacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(cache, "opensearch-"+OpenSearchVersion), nil
}

const openSearchMarker = ".complete"

func openSearchDownloaded() bool {
	home, err := openSearchHome()
	if err != nil {
		return false
	}
	return fileExists(filepath.Join(home, openSearchMarker))
}

// downloadOpenSearch fetches the integ-test-zip with Maven into the cache's
// Maven repository (<cache>/m2), unpacks it into <cache>/opensearch-<v> and
// writes the marker file.
func downloadOpenSearch(ctx context.Context, cache string) error {
	if openSearchDownloaded() {
		return nil
	}
	mvn := lookBin("mvn")
	if mvn == "" {
		return errors.New("testharness: mvn not found; cannot download OpenSearch")
	}
	home, err := openSearchHome()
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
	cmd := exec.CommandContext(ctx, mvn, "-q", "-B",
		"-Dmaven.repo.local="+filepath.Join(cache, "m2"),
		"dependency:copy", "-Dartifact="+openSearchArtifact, "-DoutputDirectory="+work)
	cmd.Dir = work
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("testharness: downloading OpenSearch %s with Maven: %v\n%s", OpenSearchVersion, err, tail(out, 30))
	}
	zipPath := filepath.Join(work, "opensearch-"+OpenSearchVersion+".zip")
	unpacked := filepath.Join(work, "unpacked")
	if err := unzip(zipPath, unpacked); err != nil {
		return fmt.Errorf("testharness: unpacking %s: %w", zipPath, err)
	}
	dist := "opensearch-" + OpenSearchVersion
	if !fileExists(filepath.Join(unpacked, dist, "bin", "opensearch")) || !fileExists(filepath.Join(unpacked, dist, "lib")) {
		return fmt.Errorf("testharness: %s does not hold %s/bin/opensearch", zipPath, dist)
	}
	final := filepath.Join(home, dist)
	if err := os.RemoveAll(final); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(unpacked, dist), final); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(home, openSearchMarker), []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o644)
}

// unzip extracts a zip archive into dir, keeping file modes (the bin
// scripts must stay executable) and refusing paths that leave dir.
func unzip(path, dir string) error {
	zr, err := zip.OpenReader(path)
	if err != nil {
		return err
	}
	defer zr.Close()
	for _, f := range zr.File {
		name := filepath.Clean(f.Name)
		if filepath.IsAbs(name) || name == ".." || strings.HasPrefix(name, ".."+string(filepath.Separator)) {
			return fmt.Errorf("bad path %q in archive", f.Name)
		}
		dst := filepath.Join(dir, name)
		mode := f.Mode()
		switch {
		case mode.IsDir():
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return err
			}
			continue
		case mode&os.ModeSymlink != 0:
			return fmt.Errorf("unexpected symlink %q in archive", f.Name)
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		perm := os.FileMode(0o644)
		if mode&0o111 != 0 {
			perm = 0o755
		}
		if err := extractFile(f, dst, perm); err != nil {
			return err
		}
	}
	return nil
}

func extractFile(f *zip.File, dst string, perm os.FileMode) error {
	r, err := f.Open()
	if err != nil {
		return err
	}
	defer r.Close()
	w, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(w, r); err != nil {
		w.Close()
		return err
	}
	return w.Close()
}

// linkTree recreates the tree src at dst (which must not exist) with hard
// links to src's files, or copies where linking fails (another file
// system). Directories are created 0755 and files keep their modes, so the
// server user can read the copy.
func linkTree(src, dst string) error {
	linkOK := true
	return filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		switch {
		case info.IsDir():
			return os.MkdirAll(target, 0o755)
		case !info.Mode().IsRegular():
			return nil
		}
		if linkOK {
			if err := os.Link(p, target); err == nil {
				return nil
			}
			linkOK = false
		}
		in, err := os.Open(p)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_EXCL, info.Mode().Perm())
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	})
}
