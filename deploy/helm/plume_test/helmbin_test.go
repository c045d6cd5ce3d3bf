package helmtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// The Helm the chart is tested with, built from source through the Go
// module proxy (no other download is possible on the build machines). The
// link flags are those of Helm's own release build, so that the binary
// reports its version and renders for the Kubernetes version its libraries
// were released with (1.37 for v3.22.0), not the 1.20 fallback.
const (
	helmVersion  = "v3.22.0"
	helmPackage  = "helm.sh/helm/v3/cmd/helm"
	helmK8sMajor = "1"
	helmK8sMinor = "37"
	// helmBuildTimeout bounds a cold build (download and compile: about
	// 4 minutes on a 2-core machine).
	helmBuildTimeout = 20 * time.Minute
)

var helmOnce struct {
	sync.Once
	path string
	err  error
}

// cacheDir is $PLUME_CACHE, or plume/ in the user cache directory: the
// same cache the integration tests' installers use.
func cacheDir() (string, error) {
	if d := os.Getenv("PLUME_CACHE"); d != "" {
		return d, nil
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no cache directory (set PLUME_CACHE): %w", err)
	}
	return filepath.Join(d, "plume"), nil
}

// helmBinary returns the path of the pinned helm, building it on first use.
// In -short mode a helm that is not built yet skips the test instead.
func helmBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("PLUME_HELM"); p != "" {
		return p
	}
	dir, err := cacheDir()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "helm-"+helmVersion, "helm")
	if runtime.GOOS == "windows" {
		bin += ".exe"
	}
	if testing.Short() {
		if _, err := os.Stat(bin); err != nil {
			t.Skipf("-short: helm %s is not built yet (%s); run the tests once without -short to build it (a few minutes)", helmVersion, bin)
		}
	}
	helmOnce.Do(func() {
		helmOnce.path, helmOnce.err = buildHelm(t, bin)
	})
	if helmOnce.err != nil {
		t.Fatal(helmOnce.err)
	}
	return helmOnce.path
}

// buildHelm builds helm into bin unless it is there already. A file lock
// serialises concurrent test processes (go test -p runs packages in
// parallel, and several checkouts share the cache); the binary appears by
// rename, so a reader never sees half a file.
func buildHelm(t testing.TB, bin string) (string, error) {
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		return "", err
	}
	if ok, err := helmWorks(bin); ok {
		return bin, nil
	} else if err != nil {
		t.Logf("cached helm %s unusable, rebuilding: %v", bin, err)
	}
	unlock, err := lockFile(bin + ".lock")
	if err != nil {
		return "", fmt.Errorf("locking %s.lock: %w", bin, err)
	}
	defer unlock()
	if ok, _ := helmWorks(bin); ok { // built by another process meanwhile
		return bin, nil
	}

	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	tmp, err := os.MkdirTemp(filepath.Dir(bin), "build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)

	ldflags := strings.Join([]string{
		"-s", "-w",
		"-X", "helm.sh/helm/v3/internal/version.version=" + helmVersion,
		"-X", "helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=" + helmK8sMajor,
		"-X", "helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=" + helmK8sMinor,
		"-X", "helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=" + helmK8sMajor,
		"-X", "helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=" + helmK8sMinor,
	}, " ")
	args := []string{"install", "-trimpath", "-ldflags", ldflags, helmPackage + "@" + helmVersion}

	timeout := helmBuildTimeout
	if dl, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if d, ok := dl.Deadline(); ok && time.Until(d)-30*time.Second < timeout {
			timeout = time.Until(d) - 30*time.Second
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = tmp // outside any module: pkg@version ignores the current module anyway
	cmd.Env = append(os.Environ(),
		"GOBIN="+tmp,
		"GOFLAGS=", // no -mod=... from the caller's environment
		"GOWORK=off",
		"CGO_ENABLED=0",
	)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	t.Logf("building helm %s from source into %s (once; a few minutes cold)...", helmVersion, bin)
	if err := cmd.Run(); err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			err = fmt.Errorf("timed out after %s (give go test a longer -timeout)", timeout)
		}
		return "", fmt.Errorf("building helm %s failed: go %s: %v\n"+
			"It is built from the Go module proxy; check GOPROXY and network access, or set PLUME_HELM=/path/to/helm to use an installed helm %s.\n%s",
			helmVersion, strings.Join(args, " "), err, helmVersion, out.String())
	}
	built := filepath.Join(tmp, filepath.Base(bin))
	if err := os.Rename(built, bin); err != nil {
		return "", err
	}
	t.Logf("built helm %s in %s", helmVersion, time.Since(start).Round(time.Second))
	if ok, err := helmWorks(bin); !ok {
		return "", fmt.Errorf("helm built into %s does not work: %v", bin, err)
	}
	return bin, nil
}

// helmWorks reports whether bin runs and is the pinned version.
func helmWorks(bin string) (bool, error) {
	if _, err := os.Stat(bin); err != nil {
		return false, nil
	}
	out, err := exec.Command(bin, "version", "--template", "{{.Version}}").CombinedOutput()
	if err != nil {
		return false, fmt.Errorf("%s version: %v: %s", bin, err, out)
	}
	if got := strings.TrimSpace(string(out)); got != helmVersion {
		return false, fmt.Errorf("%s is version %q, want %s", bin, got, helmVersion)
	}
	return true, nil
}
