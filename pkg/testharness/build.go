package testharness

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"
)

var plumeBuild struct {
	once sync.Once
	bin  string
	err  error
}

// BuildPlume builds ./cmd/plume of the module containing the working
// directory, once per test binary, and returns the path of the binary.
// It fails t if the build fails.
func BuildPlume(t testing.TB) string {
	t.Helper()
	plumeBuild.once.Do(func() {
		start := time.Now()
		plumeBuild.bin, plumeBuild.err = buildPlume()
		if plumeBuild.err == nil {
			t.Logf("testharness: built plume in %v", time.Since(start).Round(time.Millisecond))
		}
	})
	if plumeBuild.err != nil {
		t.Fatalf("testharness: build plume: %v", plumeBuild.err)
	}
	return plumeBuild.bin
}

func buildPlume() (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	return buildPlumeIn(root)
}

// buildPlumeIn builds root/cmd/plume into a harness temp dir.
func buildPlumeIn(root string) (string, error) {
	if _, err := os.Stat(filepath.Join(root, "cmd", "plume")); err != nil {
		return "", fmt.Errorf("no ./cmd/plume in %s: %w", root, err)
	}
	dir, err := mkTemp("bin")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "plume")
	cmd := exec.Command(goTool(), "build", "-o", bin, "./cmd/plume")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/plume: %v\n%s", err, out)
	}
	return bin, nil
}

// goTool returns the go command of the toolchain that built this binary if
// it exists, else "go" from $PATH.
func goTool() string {
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
		return p
	}
	return "go"
}

// ModuleRoot returns the nearest directory at or above the working
// directory that holds a go.mod.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	return moduleRootFrom(dir)
}

func moduleRootFrom(dir string) (string, error) {
	for {
		if fileExists(filepath.Join(dir, "go.mod")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod found at or above the working directory")
		}
		dir = parent
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
