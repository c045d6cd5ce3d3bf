package helmtest

import (
	"bufio"
	"debug/elf"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

const (
	dockerfilePath   = "../../docker/Dockerfile"
	dockerignorePath = "../../docker/Dockerfile.dockerignore"
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	Cmd  string // upper case: FROM, RUN, ...
	Args string
	Line int
}

type stage struct {
	From  instruction
	Name  string
	Instr []instruction
}

var dockerInstructions = map[string]bool{
	"ADD": true, "ARG": true, "CMD": true, "COPY": true, "ENTRYPOINT": true, "ENV": true,
	"EXPOSE": true, "FROM": true, "HEALTHCHECK": true, "LABEL": true, "MAINTAINER": true,
	"ONBUILD": true, "RUN": true, "SHELL": true, "STOPSIGNAL": true, "USER": true,
	"VOLUME": true, "WORKDIR": true,
}

// parseDockerfile reads the file's parser directives, global ARGs and
// stages, failing on an unknown instruction or a dangling continuation.
func parseDockerfile(t *testing.T) (directives map[string]string, globals []instruction, stages []stage) {
	t.Helper()
	f, err := os.Open(dockerfilePath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	directives = map[string]string{}
	directiveRE := regexp.MustCompile(`^#\s*([a-z]+)\s*=\s*(\S+)\s*$`)
	sc := bufio.NewScanner(f)
	n, inHeader := 0, true
	var cur *instruction
	for sc.Scan() {
		n++
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if inHeader {
			if m := directiveRE.FindStringSubmatch(trimmed); m != nil {
				directives[m[1]] = m[2]
				continue
			}
			inHeader = false
		}
		if cur == nil && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if cur != nil && strings.HasPrefix(trimmed, "#") {
			continue // comment inside a continued instruction
		}
		cont := strings.HasSuffix(trimmed, "\\")
		text := strings.TrimSuffix(trimmed, "\\")
		if cur == nil {
			cmd, args, _ := strings.Cut(text, " ")
			cur = &instruction{Cmd: strings.ToUpper(cmd), Args: strings.TrimSpace(args), Line: n}
			if !dockerInstructions[cur.Cmd] {
				t.Fatalf("%s:%d: unknown instruction %q", dockerfilePath, n, cmd)
			}
		} else {
			cur.Args += " " + strings.TrimSpace(text)
		}
		if cont {
			continue
		}
		in := *cur
		cur = nil
		if in.Cmd == "FROM" {
			st := stage{From: in}
			if f := strings.Fields(in.Args); len(f) >= 3 && strings.EqualFold(f[len(f)-2], "AS") {
				st.Name = f[len(f)-1]
			}
			stages = append(stages, st)
			continue
		}
		if len(stages) == 0 {
			if in.Cmd != "ARG" {
				t.Fatalf("%s:%d: %s before the first FROM (only ARG may be)", dockerfilePath, in.Line, in.Cmd)
			}
			globals = append(globals, in)
			continue
		}
		stages[len(stages)-1].Instr = append(stages[len(stages)-1].Instr, in)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if cur != nil {
		t.Fatalf("%s:%d: the file ends inside a continued instruction", dockerfilePath, cur.Line)
	}
	return directives, globals, stages
}

func argDefault(args []instruction, name string) (string, bool) {
	for _, a := range args {
		if a.Cmd != "ARG" {
			continue
		}
		k, v, _ := strings.Cut(a.Args, "=")
		if k == name {
			return strings.Trim(v, `"`), true
		}
	}
	return "", false
}

func (s stage) all(cmd string) []instruction {
	var out []instruction
	for _, in := range s.Instr {
		if in.Cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

func jsonArgs(t *testing.T, in instruction) []string {
	t.Helper()
	var a []string
	if err := json.Unmarshal([]byte(in.Args), &a); err != nil {
		t.Errorf("%s:%d: %s %s is not in JSON (exec) form: %v", dockerfilePath, in.Line, in.Cmd, in.Args, err)
	}
	return a
}

func TestDockerfile(t *testing.T) {
	directives, globals, stages := parseDockerfile(t)

	if s := directives["syntax"]; !strings.HasPrefix(s, "docker/dockerfile:1") {
		t.Errorf("syntax directive %q, want docker/dockerfile:1.x (cache and bind mounts)", s)
	}
	if len(stages) < 2 {
		t.Fatalf("%d stages, want a builder and a runtime stage", len(stages))
	}

	// Bases: a Go 1.26 builder, a minimal runtime.
	goImage, ok := argDefault(globals, "GO_IMAGE")
	if !ok || !strings.HasPrefix(goImage, "golang:1.26") {
		t.Errorf("ARG GO_IMAGE default %q, want golang:1.26...", goImage)
	}
	base, ok := argDefault(globals, "BASE_IMAGE")
	if !ok || !(strings.HasPrefix(base, "gcr.io/distroless/static-debian12:nonroot") || base == "scratch") {
		t.Errorf("ARG BASE_IMAGE default %q, want gcr.io/distroless/static-debian12:nonroot (or scratch)", base)
	}
	build, final := stages[0], stages[len(stages)-1]
	if !strings.Contains(build.From.Args, "${GO_IMAGE}") || build.Name == "" {
		t.Errorf("first stage %q: want FROM ... ${GO_IMAGE} AS <name>", build.From.Args)
	}
	if !strings.HasPrefix(final.From.Args, "${BASE_IMAGE}") {
		t.Errorf("final stage %q: want FROM ${BASE_IMAGE}", final.From.Args)
	}

	// The build: static, trimmed, versioned, with the module cache mounted.
	var goBuild string
	for _, in := range build.all("RUN") {
		if strings.Contains(in.Args, "go build") {
			goBuild = in.Args
		}
	}
	for _, want := range []string{
		"--mount=type=cache,target=/go/pkg/mod",
		"--mount=type=cache,target=/root/.cache/go-build",
		"CGO_ENABLED=0 go build -trimpath",
		`-ldflags "` + makefileLDFlags(t) + `"`,
		"./cmd/plume",
	} {
		if !strings.Contains(goBuild, want) {
			t.Errorf("the go build RUN does not contain %q:\n%s", want, goBuild)
		}
	}
	for _, in := range build.Instr {
		k, v, hasDefault := strings.Cut(in.Args, "=")
		if in.Cmd == "ARG" && strings.HasPrefix(k, "TARGET") && hasDefault {
			t.Errorf("%s:%d: ARG %s=%s: a default shadows the platform BuildKit sets (multi-arch images would get one architecture's binary)", dockerfilePath, in.Line, k, v)
		}
	}
	if v, ok := argDefault(build.Instr, "VERSION"); !ok || v == "" {
		t.Errorf("build stage: want ARG VERSION with a default")
	}

	// The runtime stage: no shell, a non-root numeric user, exec-form entry.
	if runs := final.all("RUN"); len(runs) > 0 {
		t.Errorf("final stage has RUN at line %d: the runtime image has no shell", runs[0].Line)
	}
	users := final.all("USER")
	if len(users) == 0 {
		t.Fatal("final stage: no USER")
	}
	if u := users[len(users)-1].Args; !regexp.MustCompile(`^[1-9][0-9]*:[1-9][0-9]*$`).MatchString(u) || u != "65532:65532" {
		t.Errorf("USER %q, want 65532:65532 (numeric, so runAsNonRoot can verify it)", u)
	}
	if e := final.all("ENTRYPOINT"); len(e) != 1 || !reflect.DeepEqual(jsonArgs(t, e[0]), []string{"/plume"}) {
		t.Errorf("want ENTRYPOINT [\"/plume\"], got %v", e)
	}
	if c := final.all("CMD"); len(c) != 1 || !reflect.DeepEqual(jsonArgs(t, c[0]), []string{"run", "-c", pipelinePath}) {
		t.Errorf("want CMD [\"run\",\"-c\",%q], got %v", pipelinePath, c)
	}
	exposed := map[string]bool{}
	for _, in := range final.all("EXPOSE") {
		for _, p := range strings.Fields(in.Args) {
			exposed[strings.TrimSuffix(p, "/tcp")] = true
		}
	}
	if !exposed["9100"] || !exposed["8080"] {
		t.Errorf("EXPOSE %v, want 9100 (metrics) and 8080 (admin)", exposed)
	}
	var volumes []string
	for _, in := range final.all("VOLUME") {
		volumes = append(volumes, jsonArgs(t, in)...)
	}
	if !reflect.DeepEqual(volumes, []string{stateRoot}) {
		t.Errorf("VOLUME %v, want [%s]", volumes, stateRoot)
	}
	copied := false
	for _, in := range final.all("COPY") {
		if strings.Contains(in.Args, "--from="+build.Name) && strings.HasSuffix(in.Args, " /plume") {
			copied = true
		}
	}
	if !copied {
		t.Errorf("final stage does not COPY --from=%s ... /plume", build.Name)
	}
	labels := ""
	for _, in := range final.all("LABEL") {
		labels += " " + in.Args
	}
	for _, l := range []string{"title", "description", "source", "version", "revision", "created"} {
		if !strings.Contains(labels, "org.opencontainers.image."+l+"=") {
			t.Errorf("no OCI label org.opencontainers.image.%s", l)
		}
	}

	// Variables used in a stage are declared in it (ARGs do not cross
	// stages), global ARGs aside for FROM.
	varRE := regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)`)
	for i, st := range stages {
		declared := map[string]bool{"BUILDPLATFORM": true}
		for _, g := range globals {
			k, _, _ := strings.Cut(g.Args, "=")
			declared[k] = true
		}
		for _, m := range varRE.FindAllStringSubmatch(st.From.Args, -1) {
			if !declared[m[1]] {
				t.Errorf("stage %d FROM uses $%s, which no global ARG declares", i, m[1])
			}
		}
		declared = map[string]bool{}
		for _, in := range st.Instr {
			switch in.Cmd {
			case "ARG":
				k, _, _ := strings.Cut(in.Args, "=")
				declared[k] = true
			case "ENV":
				for _, kv := range strings.Fields(in.Args) {
					if k, _, ok := strings.Cut(kv, "="); ok {
						declared[k] = true
					}
				}
			case "LABEL", "WORKDIR", "USER", "COPY", "EXPOSE", "VOLUME":
				for _, m := range varRE.FindAllStringSubmatch(in.Args, -1) {
					if !declared[m[1]] {
						t.Errorf("%s:%d: %s uses $%s, not declared in this stage", dockerfilePath, in.Line, in.Cmd, m[1])
					}
				}
			}
		}
	}
}

// makefileLDFlags returns the Makefile's LDFLAGS with $(VERSION) written
// as the Dockerfile's $VERSION: the image is built like `make build`.
func makefileLDFlags(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^LDFLAGS\s*:?=\s*(.*)$`).FindStringSubmatch(string(data))
	if m == nil {
		t.Fatal("Makefile: no LDFLAGS")
	}
	return strings.ReplaceAll(strings.TrimSpace(m[1]), "$(VERSION)", "$VERSION")
}

// TestDockerignoreKeepsBuildInputs: nothing the build of cmd/plume reads
// is excluded from the build context: go.mod, go.sum and the non-test Go
// files of every package of this module cmd/plume imports.
func TestDockerignoreKeepsBuildInputs(t *testing.T) {
	patterns := dockerignorePatterns(t)
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "list", "-deps", "-f", `{{if not .Standard}}{{.Dir}}{{range .GoFiles}} {{.}}{{end}}{{range .EmbedFiles}} {{.}}{{end}}{{end}}`, "./cmd/plume")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	inputs := []string{"go.mod", "go.sum"}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		rel, err := filepath.Rel(root, f[0])
		if err != nil || strings.HasPrefix(rel, "..") {
			continue // a dependency from the module cache
		}
		for _, name := range f[1:] {
			inputs = append(inputs, filepath.ToSlash(filepath.Join(rel, name)))
		}
	}
	if len(inputs) < 5 {
		t.Fatalf("go list found only %v", inputs)
	}
	for _, in := range inputs {
		if p, ok := excluded(patterns, in); ok {
			t.Errorf("%s excludes %s, which the build needs (pattern %q)", dockerignorePath, in, p)
		}
	}
	for _, junk := range []string{".git/config", "bin/plume", "data/quickstart/offsets/MANIFEST", "router.test", "pkg/config/config_test.go", "deploy/helm/plume/values.yaml"} {
		if _, ok := excluded(patterns, junk); !ok {
			t.Errorf("%s does not exclude %s", dockerignorePath, junk)
		}
	}
}

func dockerignorePatterns(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(dockerignorePath)
	if err != nil {
		t.Fatal(err)
	}
	var ps []string
	for _, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(l, "!") {
			t.Fatalf("%s: exceptions (%s) are not supported by this test's matcher", dockerignorePath, l)
		}
		ps = append(ps, strings.TrimPrefix(l, "/"))
	}
	return ps
}

// excluded reports whether a path of the context is excluded, with
// .dockerignore's semantics for the patterns used here: a pattern matches
// the path or one of its parent directories; a leading **/ matches any
// number of directories.
func excluded(patterns []string, path string) (string, bool) {
	parts := strings.Split(path, "/")
	for _, p := range patterns {
		for end := 1; end <= len(parts); end++ {
			prefix := strings.Join(parts[:end], "/")
			if rest, ok := strings.CutPrefix(p, "**/"); ok {
				for start := 0; start < end; start++ {
					if m, _ := filepath.Match(rest, strings.Join(parts[start:end], "/")); m {
						return p, true
					}
				}
			} else if m, _ := filepath.Match(p, prefix); m {
				return p, true
			}
		}
	}
	return "", false
}

// TestStaticBinary builds cmd/plume as the Dockerfile does and checks that
// it runs on an image with no libc: no ELF interpreter, no shared
// libraries. It then validates the container example with it.
func TestStaticBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: builds cmd/plume")
	}
	if runtime.GOOS != "linux" {
		t.Skip("ELF check: linux only")
	}
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "plume")
	const version = "9.9.9-image-test"
	cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false", "-ldflags", "-s -w -X main.version="+version, "-o", bin, "./cmd/plume")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary has an ELF interpreter: it is not static")
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("the binary needs shared libraries %v", libs)
	}
	if f.Section(".symtab") != nil {
		t.Error("the binary has a symbol table: -s was not applied")
	}
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "plume "+version {
		t.Errorf("plume version: %q, %v; want %q", out, err, "plume "+version)
	}
	example := filepath.Join(root, "pipelines/examples/container.yaml")
	if out, err := exec.Command(bin, "validate", "-c", example).CombinedOutput(); err != nil {
		t.Errorf("plume validate -c %s: %v\n%s", example, err, out)
	}
}
