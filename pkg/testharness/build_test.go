package testharness

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestBuildPlumeIn builds a stand-in module's cmd/plume (the real one is
// exercised by the end-to-end tests that call BuildPlume) and runs it.
func TestBuildPlumeIn(t *testing.T) {
	root := t.TempDir()
	write := func(name, content string) {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("go.mod", "module example.com/fake\n\ngo 1.22\n")
	write("cmd/plume/main.go", "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"fake plume\") }\n")
	write("pkg/deep/x.go", "package deep\n")

	got, err := moduleRootFrom(filepath.Join(root, "pkg", "deep"))
	if err != nil || got != root {
		t.Fatalf("moduleRootFrom = %q, %v; want %q", got, err, root)
	}
	bin, err := buildPlumeIn(root)
	if err != nil {
		t.Fatal(err)
	}
	p := StartProcess(t, bin)
	if err := p.Wait(); err != nil || !p.WaitOutput("fake plume", time.Second) {
		t.Fatalf("run: %v, output %q", err, p.Output())
	}
	if _, err := os.Stat(filepath.Join(root, "cmd", "plume", "plume")); err == nil {
		t.Fatal("binary written into the source tree")
	}
}
