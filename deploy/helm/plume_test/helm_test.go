package helmtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/plumecdc/plume/pkg/config"
	"github.com/plumecdc/plume/pkg/runtime"

	// Every connector, so that the examples' sources and targets are
	// checked as plume validate checks them.
	_ "github.com/plumecdc/plume/connectors/http"
	_ "github.com/plumecdc/plume/connectors/kafka"
	_ "github.com/plumecdc/plume/connectors/lake"
	_ "github.com/plumecdc/plume/connectors/mysql"
	_ "github.com/plumecdc/plume/connectors/postgres"
	_ "github.com/plumecdc/plume/connectors/salesforce"
	_ "github.com/plumecdc/plume/connectors/search"
	_ "github.com/plumecdc/plume/connectors/sql"
)

const (
	chartDir    = "../plume"
	examplesDir = "../plume/examples"
	repoRoot    = "../../.."
	release     = "plume-test"
	namespace   = "cdc"

	stateRoot    = "/var/lib/plume"
	pipelinePath = "/etc/plume/pipeline.yaml"
	nonRootUID   = int64(65532)
)

// helm runs the pinned helm with an empty, private configuration (no
// repositories or plugins of the user's).
func helm(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	home := t.TempDir()
	cmd := exec.Command(helmBinary(t), args...)
	cmd.Env = append(os.Environ(),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"),
	)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// render runs helm template with the given extra arguments and fails the
// test if it fails.
func render(t *testing.T, args ...string) []manifest {
	t.Helper()
	full := append([]string{"template", release, chartDir, "--namespace", namespace}, args...)
	out, errOut, err := helm(t, full...)
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(full, " "), err, errOut)
	}
	if strings.TrimSpace(errOut) != "" {
		t.Errorf("helm %s printed warnings:\n%s", strings.Join(full, " "), errOut)
	}
	return decodeAll(t, out)
}

// manifest is one rendered document, decoded strictly into its API type.
type manifest struct {
	Kind, APIVersion, Name string
	Source                 string // "# Source:" comment
	Obj                    any    // *appsv1.StatefulSet, *corev1.Service, ...
	JSON                   []byte
}

var docSep = regexp.MustCompile(`(?m)^---[ \t]*$`)

// newObject maps apiVersion/kind to the Go type a document must decode
// into. Every kind the chart renders must be listed: an unlisted one fails
// the test, so a new template cannot escape strict decoding.
func newObject(apiVersion, kind string) (any, bool) {
	switch apiVersion + "/" + kind {
	case "apps/v1/StatefulSet":
		return &appsv1.StatefulSet{}, true
	case "apps/v1/Deployment":
		return &appsv1.Deployment{}, true
	case "v1/Service":
		return &corev1.Service{}, true
	case "v1/ConfigMap":
		return &corev1.ConfigMap{}, true
	case "v1/Secret":
		return &corev1.Secret{}, true
	case "v1/ServiceAccount":
		return &corev1.ServiceAccount{}, true
	case "policy/v1/PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, true
	case "networking.k8s.io/v1/NetworkPolicy":
		return &networkingv1.NetworkPolicy{}, true
	case "monitoring.coreos.com/v1/ServiceMonitor":
		return &serviceMonitor{}, true
	}
	return nil, false
}

// serviceMonitor is the part of the Prometheus Operator's ServiceMonitor
// (monitoring.coreos.com/v1) the chart may use; decoding into it strictly
// catches a misspelt or misplaced field.
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		JobLabel          string `json:"jobLabel,omitempty"`
		NamespaceSelector struct {
			Any        bool     `json:"any,omitempty"`
			MatchNames []string `json:"matchNames,omitempty"`
		} `json:"namespaceSelector"`
		Selector  metav1.LabelSelector `json:"selector"`
		Endpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path,omitempty"`
			Scheme        string `json:"scheme,omitempty"`
			Interval      string `json:"interval,omitempty"`
			ScrapeTimeout string `json:"scrapeTimeout,omitempty"`
		} `json:"endpoints"`
	} `json:"spec"`
}

func decodeAll(t *testing.T, out string) []manifest {
	t.Helper()
	var ms []manifest
	seen := map[string]bool{}
	for i, doc := range docSep.Split(out, -1) {
		source := ""
		if m := regexp.MustCompile(`(?m)^# Source: (.*)$`).FindStringSubmatch(doc); m != nil {
			source = m[1]
		}
		var generic map[string]any
		if err := sigsyaml.UnmarshalStrict([]byte(doc), &generic); err != nil {
			t.Fatalf("document %d (%s): invalid YAML: %v\n%s", i, source, err, doc)
		}
		if len(generic) == 0 {
			continue // only comments
		}
		kind, _ := generic["kind"].(string)
		apiVersion, _ := generic["apiVersion"].(string)
		meta, _ := generic["metadata"].(map[string]any)
		name, _ := meta["name"].(string)
		if kind == "" || apiVersion == "" || name == "" {
			t.Fatalf("document %d (%s): kind %q, apiVersion %q, metadata.name %q: all are required\n%s", i, source, kind, apiVersion, name, doc)
		}
		if _, ok := meta["namespace"]; ok {
			t.Errorf("%s %s: sets metadata.namespace; leave it to helm --namespace", kind, name)
		}
		key := kind + "/" + name
		if seen[key] {
			t.Errorf("%s rendered twice", key)
		}
		seen[key] = true
		js, err := sigsyaml.YAMLToJSONStrict([]byte(doc))
		if err != nil {
			t.Fatalf("%s (%s): %v", key, source, err)
		}
		obj, ok := newObject(apiVersion, kind)
		if !ok {
			t.Fatalf("%s (%s): apiVersion %s kind %s is not known to the test; add its Go type to newObject", key, source, apiVersion, kind)
		}
		dec := json.NewDecoder(bytes.NewReader(js))
		dec.DisallowUnknownFields()
		if err := dec.Decode(obj); err != nil {
			t.Fatalf("%s (%s): does not decode strictly into %T: %v\n%s", key, source, obj, err, doc)
		}
		ms = append(ms, manifest{Kind: kind, APIVersion: apiVersion, Name: name, Source: source, Obj: obj, JSON: js})
	}
	if len(ms) == 0 {
		t.Fatal("helm template rendered no manifests")
	}
	return ms
}

func find[T any](ms []manifest) []T {
	var out []T
	for _, m := range ms {
		if o, ok := m.Obj.(T); ok {
			out = append(out, o)
		}
	}
	return out
}

func kinds(ms []manifest) []string {
	var ks []string
	for _, m := range ms {
		ks = append(ks, m.Kind+"/"+m.Name)
	}
	sort.Strings(ks)
	return ks
}

func examples(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(examplesDir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no example values files in %s (%v)", examplesDir, err)
	}
	return files
}

func TestHelmLint(t *testing.T) {
	cases := [][]string{nil}
	for _, f := range examples(t) {
		cases = append(cases, []string{"-f", f})
	}
	for _, extra := range cases {
		args := append([]string{"lint", "--strict", chartDir}, extra...)
		out, errOut, err := helm(t, args...)
		if err != nil {
			t.Errorf("helm %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
		}
	}
}

// renderCase is one helm template invocation expected to succeed.
type renderCase struct {
	name string
	args []string
	// workloads: "StatefulSet/stage", "Deployment/stage" expected.
	statefulStage, routerStage string
}

func renderCases(t *testing.T) []renderCase {
	cases := []renderCase{
		{name: "defaults", statefulStage: "all"},
		{name: "no-persistence", args: []string{"--set", "persistence.enabled=false"}, statefulStage: "all"},
		{name: "no-admin-no-probes", args: []string{"--set", "admin.enabled=false,probes.liveness.enabled=false,probes.readiness.enabled=false,probes.startup.enabled=false"}, statefulStage: "all"},
		{name: "no-metrics-no-admin", args: []string{"--set", "metrics.enabled=false,admin.enabled=false,probes.liveness.enabled=false,probes.readiness.enabled=false,probes.startup.enabled=false,networkPolicy.enabled=true"}, statefulStage: "all"},
		{name: "digest", args: []string{"--set", "image.digest=sha256:" + strings.Repeat("ab", 32)}, statefulStage: "all"},
		{name: "stopped", args: []string{"--set", "replicas=0"}, statefulStage: "all"},
		{name: "erp-sync-route-only", args: []string{"-f", filepath.Join(examplesDir, "erp-sync.yaml"), "--set", "stage=route"}, routerStage: "route"},
		{name: "erp-sync-capture-only", args: []string{"-f", filepath.Join(examplesDir, "erp-sync.yaml"), "--set", "stage=capture"}, statefulStage: "capture"},
		{name: "erp-sync-pipeline-file", args: []string{"-f", filepath.Join(examplesDir, "erp-sync.yaml"), "--set-file", "pipeline=" + filepath.Join(repoRoot, "pipelines/examples/erp-sync.yaml")}, statefulStage: "capture", routerStage: "route"},
	}
	for _, f := range examples(t) {
		c := renderCase{name: "example-" + strings.TrimSuffix(filepath.Base(f), ".yaml"), args: []string{"-f", f}}
		var v struct {
			Stage string `json:"stage"`
		}
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := sigsyaml.Unmarshal(data, &v); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		switch v.Stage {
		case "", "all":
			c.statefulStage = "all"
		case "split":
			c.statefulStage, c.routerStage = "capture", "route"
		case "capture":
			c.statefulStage = "capture"
		case "route":
			c.routerStage = "route"
		}
		cases = append(cases, c)
	}
	return cases
}

// TestHelmTemplate renders the chart with the default values, every example
// and a few variants, decodes every manifest strictly, and checks what the
// deployment depends on.
func TestHelmTemplate(t *testing.T) {
	for _, c := range renderCases(t) {
		t.Run(c.name, func(t *testing.T) {
			ms := render(t, c.args...)
			t.Logf("rendered %s", strings.Join(kinds(ms), ", "))
			checkWorkloads(t, ms, c)
			checkServices(t, ms)
			checkPipeline(t, ms)
			checkPDBs(t, ms)
			checkNetworkPolicy(t, ms)
		})
	}
}

func checkWorkloads(t *testing.T, ms []manifest, c renderCase) {
	t.Helper()
	sts := find[*appsv1.StatefulSet](ms)
	deps := find[*appsv1.Deployment](ms)
	if (c.statefulStage != "") != (len(sts) == 1) || len(sts) > 1 {
		t.Fatalf("want a StatefulSet: %v, got %d", c.statefulStage != "", len(sts))
	}
	if (c.routerStage != "") != (len(deps) == 1) || len(deps) > 1 {
		t.Fatalf("want a router Deployment: %v, got %d", c.routerStage != "", len(deps))
	}
	for _, s := range sts {
		if r := s.Spec.Replicas; r == nil || *r > 1 {
			t.Errorf("StatefulSet %s: replicas %v, want at most 1 (one active reader per source)", s.Name, r)
		}
		if s.Spec.ServiceName == "" || findService(ms, s.Spec.ServiceName) == nil {
			t.Errorf("StatefulSet %s: serviceName %q is not a rendered Service", s.Name, s.Spec.ServiceName)
		}
		checkSelector(t, "StatefulSet "+s.Name, s.Spec.Selector, s.Spec.Template.Labels)
		persistent := false
		for _, pvc := range s.Spec.VolumeClaimTemplates {
			if pvc.Name == "state" {
				persistent = true
				if _, ok := pvc.Spec.Resources.Requests[corev1.ResourceStorage]; !ok {
					t.Errorf("StatefulSet %s: claim template state has no storage request", s.Name)
				}
			}
		}
		checkPod(t, ms, "StatefulSet "+s.Name, s.Spec.Template.Spec, c.statefulStage, persistent)
	}
	for _, d := range deps {
		checkSelector(t, "Deployment "+d.Name, d.Spec.Selector, d.Spec.Template.Labels)
		if len(d.Spec.Template.Spec.Volumes) > 0 {
			for _, v := range d.Spec.Template.Spec.Volumes {
				if v.Name == "state" && v.EmptyDir == nil {
					t.Errorf("Deployment %s: state volume is not an emptyDir", d.Name)
				}
			}
		}
		checkPod(t, ms, "Deployment "+d.Name, d.Spec.Template.Spec, c.routerStage, false)
	}
}

func checkSelector(t *testing.T, what string, sel *metav1.LabelSelector, podLabels map[string]string) {
	t.Helper()
	if sel == nil || len(sel.MatchLabels) == 0 {
		t.Errorf("%s: empty selector", what)
		return
	}
	for k, v := range sel.MatchLabels {
		if podLabels[k] != v {
			t.Errorf("%s: selector %s=%s does not match the pod template's labels %v", what, k, v, podLabels)
		}
	}
}

// checkPod asserts the security settings, mounts, arguments and probes of a
// Plume pod.
func checkPod(t *testing.T, ms []manifest, what string, pod corev1.PodSpec, stage string, claim bool) {
	t.Helper()
	psc := pod.SecurityContext
	if psc == nil {
		t.Fatalf("%s: no pod securityContext", what)
	}
	if psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Errorf("%s: pod runAsNonRoot is not true", what)
	}
	if psc.RunAsUser == nil || *psc.RunAsUser != nonRootUID {
		t.Errorf("%s: pod runAsUser %v, want %d", what, psc.RunAsUser, nonRootUID)
	}
	if psc.FSGroup == nil || *psc.FSGroup != nonRootUID {
		t.Errorf("%s: pod fsGroup %v, want %d (the state volume must be writable)", what, psc.FSGroup, nonRootUID)
	}
	if psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: pod seccompProfile %v, want RuntimeDefault", what, psc.SeccompProfile)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Errorf("%s: automountServiceAccountToken is not false", what)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%s: %d containers, want 1", what, len(pod.Containers))
	}
	ctr := pod.Containers[0]
	sc := ctr.SecurityContext
	if sc == nil {
		t.Fatalf("%s: no container securityContext", what)
	}
	switch {
	case sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot:
		t.Errorf("%s: container runAsNonRoot is not true", what)
	case sc.RunAsUser == nil || *sc.RunAsUser != nonRootUID:
		t.Errorf("%s: container runAsUser %v, want %d", what, sc.RunAsUser, nonRootUID)
	case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
		t.Errorf("%s: readOnlyRootFilesystem is not true", what)
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		t.Errorf("%s: allowPrivilegeEscalation is not false", what)
	case sc.Privileged != nil && *sc.Privileged:
		t.Errorf("%s: privileged", what)
	case sc.Capabilities == nil || !reflect.DeepEqual(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0:
		t.Errorf("%s: capabilities %+v, want drop [ALL] and nothing added", what, sc.Capabilities)
	case sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
		t.Errorf("%s: container seccompProfile %v, want RuntimeDefault", what, sc.SeccompProfile)
	}

	wantArgs := []string{"run", "-c", pipelinePath, "--stage", stage}
	if len(ctr.Args) < len(wantArgs) || !reflect.DeepEqual(ctr.Args[:len(wantArgs)], wantArgs) {
		t.Errorf("%s: args %q, want %q first", what, ctr.Args, wantArgs)
	}
	if len(ctr.Command) > 0 {
		t.Errorf("%s: command %q overrides the image's entrypoint", what, ctr.Command)
	}
	if ctr.Resources.Requests.Memory().IsZero() || ctr.Resources.Limits.Memory().IsZero() {
		t.Errorf("%s: resources %+v: want memory requests and limits", what, ctr.Resources)
	}

	// Mounts: the state volume at /var/lib/plume (the pipeline's state_dir
	// is below it), the pipeline file, a writable /tmp.
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range ctr.VolumeMounts {
		mounts[m.MountPath] = m
	}
	state, ok := mounts[stateRoot]
	if !ok || state.Name != "state" || state.ReadOnly {
		t.Errorf("%s: want the volume state mounted read-write at %s, got %+v", what, stateRoot, ctr.VolumeMounts)
	}
	if m, ok := mounts[pipelinePath]; !ok || !m.ReadOnly {
		t.Errorf("%s: want the pipeline mounted read-only at %s, got %+v", what, pipelinePath, ctr.VolumeMounts)
	}
	if _, ok := mounts["/tmp"]; !ok {
		t.Errorf("%s: no /tmp mount (the root filesystem is read-only)", what)
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
	}
	for _, m := range ctr.VolumeMounts {
		if _, ok := volumes[m.Name]; !ok && !(claim && m.Name == "state") {
			t.Errorf("%s: mount %s of an undefined volume %q", what, m.MountPath, m.Name)
		}
	}
	if claim {
		if _, ok := volumes["state"]; ok {
			t.Errorf("%s: a pod volume state shadows the claim template", what)
		}
	}
	if v, ok := volumes["pipeline"]; !ok || v.ConfigMap == nil || findConfigMap(ms, v.ConfigMap.Name) == nil {
		t.Errorf("%s: the pipeline volume does not refer to a rendered ConfigMap", what)
	}

	// Probes: on the admin port's name, which must exist.
	ports := map[string]int32{}
	for _, p := range ctr.Ports {
		ports[p.Name] = p.ContainerPort
	}
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"liveness", ctr.LivenessProbe, "/healthz"}, {"readiness", ctr.ReadinessProbe, "/readyz"}, {"startup", ctr.StartupProbe, "/healthz"}} {
		if p.probe == nil {
			continue
		}
		g := p.probe.HTTPGet
		if g == nil || g.Path != p.path || g.Port.StrVal != "admin" {
			t.Errorf("%s: %s probe %+v, want GET %s on port admin", what, p.name, p.probe.ProbeHandler, p.path)
		}
		if _, ok := ports["admin"]; !ok {
			t.Errorf("%s: %s probe but no admin port", what, p.name)
		}
	}

	// Environment: every secret it names is rendered, or external.
	for _, e := range ctr.Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil && e.ValueFrom.SecretKeyRef.Name == "" {
			t.Errorf("%s: env %s from a secret without a name", what, e.Name)
		}
	}
	for _, ef := range ctr.EnvFrom {
		if ef.SecretRef != nil && strings.HasPrefix(ef.SecretRef.Name, release) && findSecret(ms, ef.SecretRef.Name) == nil {
			t.Errorf("%s: envFrom the chart's Secret %s, which is not rendered", what, ef.SecretRef.Name)
		}
	}
}

func findService(ms []manifest, name string) *corev1.Service {
	for _, s := range find[*corev1.Service](ms) {
		if s.Name == name {
			return s
		}
	}
	return nil
}

func findConfigMap(ms []manifest, name string) *corev1.ConfigMap {
	for _, c := range find[*corev1.ConfigMap](ms) {
		if c.Name == name {
			return c
		}
	}
	return nil
}

func findSecret(ms []manifest, name string) *corev1.Secret {
	for _, s := range find[*corev1.Secret](ms) {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// podTemplates returns the pod templates of the rendered workloads.
func podTemplates(ms []manifest) []corev1.PodTemplateSpec {
	var pts []corev1.PodTemplateSpec
	for _, s := range find[*appsv1.StatefulSet](ms) {
		pts = append(pts, s.Spec.Template)
	}
	for _, d := range find[*appsv1.Deployment](ms) {
		pts = append(pts, d.Spec.Template)
	}
	return pts
}

// checkServices: each Service selects pods that exist and targets ports
// they declare.
func checkServices(t *testing.T, ms []manifest) {
	t.Helper()
	pts := podTemplates(ms)
	for _, s := range find[*corev1.Service](ms) {
		var matched []corev1.PodTemplateSpec
		for _, pt := range pts {
			if labelsMatch(s.Spec.Selector, pt.Labels) {
				matched = append(matched, pt)
			}
		}
		if len(s.Spec.Selector) == 0 || len(matched) == 0 {
			t.Errorf("Service %s: selector %v matches no rendered pod template", s.Name, s.Spec.Selector)
			continue
		}
		for _, p := range s.Spec.Ports {
			for _, pt := range matched {
				if !hasPort(pt.Spec.Containers[0], p.TargetPort.String()) {
					t.Errorf("Service %s: port %s targets %s, which the pods do not declare", s.Name, p.Name, p.TargetPort.String())
				}
			}
		}
	}
	for _, sm := range find[*serviceMonitor](ms) {
		n := 0
		for _, s := range find[*corev1.Service](ms) {
			if labelsMatch(sm.Spec.Selector.MatchLabels, s.Labels) {
				n++
				if s.Spec.ClusterIP == corev1.ClusterIPNone {
					t.Errorf("ServiceMonitor %s selects the headless Service %s: pods would be scraped twice", sm.Name, s.Name)
				}
			}
		}
		if n == 0 {
			t.Errorf("ServiceMonitor %s: selects no Service", sm.Name)
		}
	}
}

func hasPort(c corev1.Container, name string) bool {
	for _, p := range c.Ports {
		if p.Name == name {
			return true
		}
	}
	return false
}

func labelsMatch(selector, labels map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func checkPDBs(t *testing.T, ms []manifest) {
	t.Helper()
	pts := podTemplates(ms)
	for _, p := range find[*policyv1.PodDisruptionBudget](ms) {
		if (p.Spec.MinAvailable == nil) == (p.Spec.MaxUnavailable == nil) {
			t.Errorf("PodDisruptionBudget %s: want exactly one of minAvailable, maxUnavailable", p.Name)
		}
		n := 0
		for _, pt := range pts {
			if labelsMatch(p.Spec.Selector.MatchLabels, pt.Labels) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("PodDisruptionBudget %s: selects %d workloads, want 1", p.Name, n)
		}
	}
}

func checkNetworkPolicy(t *testing.T, ms []manifest) {
	t.Helper()
	for _, np := range find[*networkingv1.NetworkPolicy](ms) {
		n := 0
		for _, pt := range podTemplates(ms) {
			if labelsMatch(np.Spec.PodSelector.MatchLabels, pt.Labels) {
				n++
			}
		}
		if n == 0 {
			t.Errorf("NetworkPolicy %s selects no pods", np.Name)
		}
	}
}

var envRefRE = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}`)

// checkPipeline parses the rendered pipeline with Plume's own parser, with
// exactly the environment variables the pods get from the chart: a ${VAR}
// that nothing provides fails here as it would in the pod. Then it runs
// plume validate's checks (runtime.Validate): routes compile, and the
// source and every target accept their blocks.
func checkPipeline(t *testing.T, ms []manifest) {
	t.Helper()
	cms := find[*corev1.ConfigMap](ms)
	if len(cms) != 1 {
		t.Fatalf("%d ConfigMaps, want 1", len(cms))
	}
	text, ok := cms[0].Data["pipeline.yaml"]
	if !ok {
		t.Fatalf("ConfigMap %s has no pipeline.yaml", cms[0].Name)
	}

	// What the pods provide: env values, env from secrets, and the keys of
	// the chart's own Secret (envFrom). Values from Secrets not rendered
	// here are stand-ins.
	provided := map[string]string{}
	for _, pt := range podTemplates(ms) {
		c := pt.Spec.Containers[0]
		for _, e := range c.Env {
			if e.ValueFrom != nil {
				provided[e.Name] = "from-secret-" + strings.ToLower(e.Name)
			} else {
				provided[e.Name] = e.Value
			}
		}
		for _, ef := range c.EnvFrom {
			if ef.SecretRef == nil {
				continue
			}
			if s := findSecret(ms, ef.SecretRef.Name); s != nil {
				for k, v := range s.Data {
					provided[ef.Prefix+k] = string(v)
				}
			}
		}
	}
	for _, m := range envRefRE.FindAllStringSubmatch(text, -1) {
		name := m[1]
		if v, ok := provided[name]; ok {
			t.Setenv(name, v)
		} else {
			t.Setenv(name, "") // restored after the test
			os.Unsetenv(name)
		}
	}

	p, err := config.Parse(pipelinePath, []byte(text))
	if err != nil {
		t.Fatalf("the rendered pipeline does not parse:\n%v\n--- %s\n%s", err, pipelinePath, text)
	}
	if err := runtime.Validate(p); err != nil {
		t.Errorf("the rendered pipeline does not validate:\n%v\n--- %s\n%s", err, pipelinePath, text)
	}
	if want := stateRoot + "/" + p.Name; p.StateDir != want {
		t.Errorf("state_dir %q, want %q", p.StateDir, want)
	}
	for _, pt := range podTemplates(ms) {
		c := pt.Spec.Containers[0]
		if port, ok := containerPort(c, "admin"); ok {
			if p.Admin == nil || p.Admin.Listen != fmt.Sprintf("0.0.0.0:%d", port) {
				t.Errorf("admin port %d declared, but the pipeline's admin is %v", port, p.Admin)
			}
		} else if p.Admin != nil && c.ReadinessProbe != nil {
			t.Errorf("readiness probe without an admin port")
		}
		if port, ok := containerPort(c, "metrics"); ok {
			if p.Metrics == nil || p.Metrics.Listen != fmt.Sprintf("0.0.0.0:%d", port) {
				t.Errorf("metrics port %d declared, but the pipeline's metrics is %v", port, p.Metrics)
			}
		}
		// Stages other than all need a Kafka cluster both stages reach.
		if args := c.Args; len(args) >= 5 && args[4] != "all" && p.Embedded() {
			t.Errorf("stage %s with the embedded broker", args[4])
		}
	}
	for _, s := range find[*corev1.Secret](ms) {
		for k := range s.Data {
			if !envNameRE.MatchString(k) {
				t.Errorf("Secret %s: key %q is not an environment variable name", s.Name, k)
			}
		}
	}
}

var envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func containerPort(c corev1.Container, name string) (int32, bool) {
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort, true
		}
	}
	return 0, false
}

// TestPipelineFileMatchesExample: pipelines/examples/erp-sync.yaml given as
// a string (--set-file) renders the same pipeline as the mapping in the
// chart's example, so the two copies cannot drift apart.
func TestPipelineFileMatchesExample(t *testing.T) {
	example := filepath.Join(examplesDir, "erp-sync.yaml")
	fromMap := render(t, "-f", example)
	fromFile := render(t, "-f", example, "--set-file", "pipeline="+filepath.Join(repoRoot, "pipelines/examples/erp-sync.yaml"))
	a, b := pipelineOf(t, fromMap), pipelineOf(t, fromFile)
	if !reflect.DeepEqual(a, b) {
		ja, _ := json.MarshalIndent(a, "", "  ")
		jb, _ := json.MarshalIndent(b, "", "  ")
		t.Errorf("the chart example's pipeline and pipelines/examples/erp-sync.yaml differ:\n%s\n---\n%s", ja, jb)
	}
}

func pipelineOf(t *testing.T, ms []manifest) map[string]any {
	t.Helper()
	var m map[string]any
	cms := find[*corev1.ConfigMap](ms)
	if len(cms) != 1 {
		t.Fatalf("%d ConfigMaps", len(cms))
	}
	if err := sigsyaml.Unmarshal([]byte(cms[0].Data["pipeline.yaml"]), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestPipelineExamplesParse: every file in pipelines/examples parses with
// Plume's parser (environment variables they reference set to stand-ins).
func TestPipelineExamplesParse(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(repoRoot, "pipelines/examples/*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no pipelines/examples/*.yaml (%v)", err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range envRefRE.FindAllStringSubmatch(string(data), -1) {
			t.Setenv(m[1], "stand-in")
		}
		p, err := config.Parse(f, data)
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		if !strings.HasPrefix(p.StateDir, stateRoot+"/") {
			t.Errorf("%s: state_dir %q is not under %s (the image's only writable directory)", f, p.StateDir, stateRoot)
		}
	}
}

// TestHelmTemplateRejects: combinations that cannot work fail to render,
// with a message that says why.
func TestHelmTemplateRejects(t *testing.T) {
	erp := filepath.Join(examplesDir, "erp-sync.yaml")
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"router-replicas-embedded-broker", []string{"--set", "router.replicas=3"},
			"router.replicas=3 needs an external Kafka cluster"},
		{"router-replicas-embedded-broker-split", []string{"--set", "stage=split,router.replicas=2"},
			"router.replicas=2 needs an external Kafka cluster"},
		{"split-embedded-broker", []string{"--set", "stage=split"},
			"stage=split needs an external Kafka cluster"},
		{"route-embedded-broker", []string{"--set", "stage=route"},
			"stage=route needs an external Kafka cluster"},
		{"two-capture-replicas", []string{"-f", erp, "--set", "replicas=2"},
			"at '/replicas': value must be one of 0, 1"},
		{"unknown-stage", []string{"--set", "stage=everything"},
			"at '/stage': value must be one of 'all', 'split', 'capture', 'route'"},
		{"unknown-value", []string{"--set", "replicaCount=3"},
			"additional properties 'replicaCount' not allowed"},
		{"unknown-pipeline-key", []string{"--set", "pipeline.sources=x"},
			"additional properties 'sources' not allowed"},
		{"bad-pipeline-name", []string{"--set", "pipeline.name=Shop Sync"},
			"'Shop Sync' does not match pattern"},
		{"state-dir-elsewhere", []string{"--set", "pipeline.state_dir=/data/plume"},
			`values.pipeline.state_dir is "/data/plume": in this chart it must be "/var/lib/plume/plume"`},
		{"admin-on-loopback", []string{"--set", "pipeline.admin.listen=127.0.0.1:8080"},
			`values.pipeline.admin.listen is "127.0.0.1:8080"`},
		{"unset-env-reference", []string{"--set", "pipeline.source.dsn=postgres://plume:${PG_PASSWORD}@db/app"},
			"the pipeline references ${PG_PASSWORD} but no secrets"},
		{"probes-without-admin", []string{"--set", "admin.enabled=false"},
			"probes need the admin server"},
		{"both-pdb-bounds", []string{"--set", "podDisruptionBudget.minAvailable=1"},
			"either minAvailable or maxUnavailable"},
		{"pipeline-not-yaml", []string{"--set-string", "pipeline=name: [x"},
			"values.pipeline: not a valid YAML mapping"},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"template", release, chartDir}, c.args...)
			out, errOut, err := helm(t, args...)
			if err == nil {
				t.Fatalf("helm %s rendered; want an error containing %q\n%s", strings.Join(args, " "), c.want, out)
			}
			if !strings.Contains(errOut, c.want) {
				t.Errorf("helm %s: error does not contain %q:\n%s", strings.Join(args, " "), c.want, errOut)
			}
		})
	}
}

// TestChartReadmeDocumentsEveryValue: each value in values.yaml has a row
// in the README's values table, and each row names a real value.
func TestChartReadmeDocumentsEveryValue(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var values map[string]any
	if err := sigsyaml.Unmarshal(data, &values); err != nil {
		t.Fatal(err)
	}
	var paths []string
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		m, ok := v.(map[string]any)
		// pipeline, resources, security contexts, strategy: documented as a whole.
		if !ok || len(m) == 0 || documentedWhole[prefix] {
			paths = append(paths, prefix)
			return
		}
		for k, sub := range m {
			p := k
			if prefix != "" {
				p = prefix + "." + k
			}
			walk(p, sub)
		}
	}
	walk("", values)
	// Keys whose default is null do not survive the YAML decoding above.
	paths = append(paths, "podDisruptionBudget.minAvailable")

	readme, err := os.ReadFile(filepath.Join(chartDir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	// The rows of the table under "## Values".
	section := string(readme)
	if _, after, ok := strings.Cut(section, "\n## Values\n"); ok {
		section, _, _ = strings.Cut(after, "\n## ")
	} else {
		t.Fatal("README.md has no \"## Values\" section")
	}
	rows := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `([^`]+)` \\|").FindAllStringSubmatch(section, -1) {
		rows[m[1]] = true
	}
	known := map[string]bool{}
	for _, p := range paths {
		known[p] = true
		if !rows[p] {
			t.Errorf("README.md: no row for the value %s", p)
		}
	}
	for r := range rows {
		if !known[r] {
			t.Errorf("README.md: the row %s names no value in values.yaml", r)
		}
	}
}

var documentedWhole = map[string]bool{
	"pipeline":           true,
	"resources":          true,
	"podSecurityContext": true,
	"securityContext":    true,
	"router.strategy":    true,
}
