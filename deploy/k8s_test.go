package deploy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
	k8sjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

const k8sDir = "deploy/k8s"

// notManifests are the files of deploy/k8s that are not Kubernetes objects.
var notManifests = map[string]bool{"kustomization.yaml": true, "nats-values.yaml": true}

// k8sKinds makes the typed object for each apiVersion and kind the
// manifests may hold.
var k8sKinds = map[string]func() any{
	"v1/Namespace":                                  func() any { return new(corev1.Namespace) },
	"v1/Secret":                                     func() any { return new(corev1.Secret) },
	"v1/Service":                                    func() any { return new(corev1.Service) },
	"apps/v1/Deployment":                            func() any { return new(appsv1.Deployment) },
	"autoscaling/v2/HorizontalPodAutoscaler":        func() any { return new(autoscalingv2.HorizontalPodAutoscaler) },
	"policy/v1/PodDisruptionBudget":                 func() any { return new(policyv1.PodDisruptionBudget) },
	"networking.k8s.io/v1/Ingress":                  func() any { return new(networkingv1.Ingress) },
	"networking.k8s.io/v1/NetworkPolicy":            func() any { return new(networkingv1.NetworkPolicy) },
	"kustomize.config.k8s.io/v1beta1/Kustomization": func() any { return new(kustomization) },
}

// kustomization is the part of kustomize's Kustomization these files use;
// decoding into it strictly catches a misspelt field all the same.
type kustomization struct {
	APIVersion string           `json:"apiVersion"`
	Kind       string           `json:"kind"`
	Namespace  string           `json:"namespace"`
	Resources  []string         `json:"resources"`
	Images     []kustomizeImage `json:"images"`
}

// kustomizeImage replaces an image name in the manifests.
type kustomizeImage struct {
	Name    string `json:"name"`
	NewName string `json:"newName"`
	NewTag  string `json:"newTag"`
}

// documentSeparator splits a YAML stream into its documents.
var documentSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// decodeStrict decodes one YAML document into the type its apiVersion and
// kind name, refusing fields that type does not have.
func decodeStrict(doc []byte) (any, error) {
	raw, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return nil, err
	}
	var meta struct{ APIVersion, Kind string }
	if err := json.Unmarshal(raw, &meta); err != nil {
		return nil, err
	}
	newObj, ok := k8sKinds[meta.APIVersion+"/"+meta.Kind]
	if !ok {
		return nil, fmt.Errorf("unexpected apiVersion %q kind %q", meta.APIVersion, meta.Kind)
	}
	obj := newObj()
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(obj); err != nil {
		return nil, fmt.Errorf("%s: %w", meta.Kind, err)
	}
	// encoding/json matches field names regardless of case, so
	// "readinessprobe" would pass above; the API server (and this decoder,
	// the one Kubernetes uses) tell them apart, and refuse duplicate keys.
	strict, err := k8sjson.UnmarshalStrict(raw, newObj())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", meta.Kind, err)
	}
	if len(strict) > 0 {
		return nil, fmt.Errorf("%s: %w", meta.Kind, errors.Join(strict...))
	}
	return obj, nil
}

// k8sObjects are the decoded manifests, by file.
type k8sObjects map[string][]any

func loadK8s(t *testing.T) k8sObjects {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(repoRoot, k8sDir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in %s: %v", k8sDir, err)
	}
	objs := k8sObjects{}
	for _, file := range files {
		name := filepath.Base(file)
		if name == "nats-values.yaml" {
			continue
		}
		src, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range documentSeparator.Split(string(src), -1) {
			if strings.TrimSpace(stripComments(doc)) == "" {
				continue
			}
			obj, err := decodeStrict([]byte(doc))
			if err != nil {
				t.Errorf("%s, document %d: %v", name, i+1, err)
				continue
			}
			objs[name] = append(objs[name], obj)
		}
	}
	return objs
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// only returns the single object of type T in the manifests, or fails.
func only[T any](t *testing.T, objs k8sObjects, name string) *T {
	t.Helper()
	var found []*T
	for _, list := range objs {
		for _, o := range list {
			if v, ok := o.(*T); ok && (name == "" || objectName(o) == name) {
				found = append(found, v)
			}
		}
	}
	if len(found) != 1 {
		var zero T
		t.Fatalf("%d objects of type %T named %q, want 1", len(found), zero, name)
	}
	return found[0]
}

// objectName returns the name of a Kubernetes object (every kind embeds
// ObjectMeta, whose GetName it promotes), or "" for anything else.
func objectName(o any) string {
	if named, ok := o.(interface{ GetName() string }); ok {
		return named.GetName()
	}
	return ""
}

func TestK8sStrictDecode(t *testing.T) {
	// The strict decoder itself refuses what the API server would.
	for name, doc := range map[string]string{
		"unknown field":  "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {selectr: {a: b}}\n",
		"wrong type":     "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: two}\n",
		"unknown kind":   "apiVersion: v1\nkind: Sevrice\nmetadata: {name: x}\n",
		"wrong version":  "apiVersion: autoscaling/v1\nkind: HorizontalPodAutoscaler\nmetadata: {name: x}\n",
		"nested unknown": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {template: {spec: {containers: [{name: a, readinessProb: {}}]}}}\n",
		"wrong case":     "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {template: {spec: {containers: [{name: a, readinessprobe: {}}]}}}\n",
	} {
		if _, err := decodeStrict([]byte(doc)); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}

	objs := loadK8s(t)
	k := only[kustomization](t, objs, "")
	var manifests []string
	for name := range objs {
		if !notManifests[name] && name != "secrets.example.yaml" {
			manifests = append(manifests, name)
		}
	}
	if got := slices.Sorted(slices.Values(k.Resources)); !slices.Equal(got, slices.Sorted(slices.Values(manifests))) {
		t.Errorf("kustomization resources %v, want every manifest but the example secrets: %v", got, manifests)
	}
	if slices.Contains(k.Resources, "secrets.example.yaml") {
		t.Error("kustomization applies the placeholder secrets")
	}
	for _, name := range []string{"gateway", "bridge"} {
		d := only[appsv1.Deployment](t, objs, name)
		image := container(t, d).Image
		if !slices.ContainsFunc(k.Images, func(i kustomizeImage) bool { return i.Name == image && i.NewName != "" && i.NewTag != "" }) {
			t.Errorf("deployment %s runs image %q, which kustomization.yaml does not set", name, image)
		}
		if d.Namespace != k.Namespace {
			t.Errorf("deployment %s is in namespace %q, not %q", name, d.Namespace, k.Namespace)
		}
	}
}

func container(t *testing.T, d *appsv1.Deployment) corev1.Container {
	t.Helper()
	if len(d.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("deployment %s has %d containers, want 1", d.Name, len(d.Spec.Template.Spec.Containers))
	}
	return d.Spec.Template.Spec.Containers[0]
}

func containerEnv(c corev1.Container, name string) (corev1.EnvVar, bool) {
	i := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == name })
	if i < 0 {
		return corev1.EnvVar{}, false
	}
	return c.Env[i], true
}

// portNumber resolves a probe's or Service's port (a number or a container
// port's name) to a number.
func portNumber(t *testing.T, c corev1.Container, p intstr.IntOrString) int {
	t.Helper()
	if p.Type == intstr.Int {
		return p.IntValue()
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort)
		}
	}
	t.Fatalf("container %s has no port named %q", c.Name, p.StrVal)
	return 0
}

func checkProbe(t *testing.T, c corev1.Container, kind string, probe *corev1.Probe, path string, port int) {
	t.Helper()
	if probe == nil || probe.HTTPGet == nil {
		t.Errorf("%s: no HTTP %s probe", c.Name, kind)
		return
	}
	if probe.HTTPGet.Path != path || portNumber(t, c, probe.HTTPGet.Port) != port {
		t.Errorf("%s: %s probe GET :%d%s, want :%d%s", c.Name, kind, portNumber(t, c, probe.HTTPGet.Port), probe.HTTPGet.Path, port, path)
	}
}

// checkProgramContainer checks what the gateway and the bridge share: the
// image's program, env vars the program reads, credentials from Secrets,
// resources, a locked-down security context.
func checkProgramContainer(t *testing.T, d *appsv1.Deployment, program string) corev1.Container {
	t.Helper()
	c := container(t, d)
	image := checkDockerfile(readFile(t, "deploy/Dockerfile"))
	if len(c.Command) != 1 || c.Command[0] != "/usr/local/bin/"+program || !slices.Contains(image.files, c.Command[0]) {
		t.Errorf("%s: command %v, want /usr/local/bin/%s from the image", d.Name, c.Command, program)
	}
	var names []string
	for _, e := range c.Env {
		names = append(names, e.Name)
		if secretName.MatchString(e.Name) || e.Name == "DATABASE_URL" {
			if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil || e.Value != "" {
				t.Errorf("%s: %s is not taken from a Secret", d.Name, e.Name)
			} else if o := e.ValueFrom.SecretKeyRef.Optional; o != nil && *o {
				t.Errorf("%s: %s's Secret is optional: the pod would start without it", d.Name, e.Name)
			}
		}
	}
	if unknown := unknownEnv(t, program, names); len(unknown) > 0 {
		t.Errorf("%s sets %v, which %s does not read (see its -h)", d.Name, unknown, program)
	}
	if user, ok := containerEnv(c, "NATS_USER"); !ok || user.Value != program {
		t.Errorf("%s: NATS_USER %q, want %q", d.Name, user.Value, program)
	}
	if pw, ok := containerEnv(c, "NATS_PASSWORD"); !ok || pw.ValueFrom == nil || pw.ValueFrom.SecretKeyRef == nil ||
		pw.ValueFrom.SecretKeyRef.Name != "productwatch-nats" || pw.ValueFrom.SecretKeyRef.Key != program+"-password" {
		t.Errorf("%s: NATS_PASSWORD is not productwatch-nats/%s-password", d.Name, program)
	}
	if u, _ := containerEnv(c, "NATS_URL"); u.Value != "nats://nats:4222" {
		t.Errorf("%s: NATS_URL %q, want the NATS chart's Service nats://nats:4222", d.Name, u.Value)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("%s: resources %+v: want CPU and memory requests and a memory limit", d.Name, c.Resources)
	}
	if e, ok := containerEnv(c, "GOMEMLIMIT"); ok {
		soft, err := resource.ParseQuantity(strings.TrimSuffix(e.Value, "B"))
		if err != nil || soft.Cmp(*c.Resources.Limits.Memory()) >= 0 {
			t.Errorf("%s: GOMEMLIMIT %s is not below the memory limit %s", d.Name, e.Value, c.Resources.Limits.Memory())
		}
	}
	pod := d.Spec.Template.Spec
	sc := c.SecurityContext
	if pod.SecurityContext == nil || pod.SecurityContext.RunAsNonRoot == nil || !*pod.SecurityContext.RunAsNonRoot ||
		sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.Capabilities == nil ||
		!slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Errorf("%s: not locked down (runAsNonRoot, readOnlyRootFilesystem, no privilege escalation, drop ALL)", d.Name)
	}
	if !selects(d.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
		t.Errorf("%s: selector %v does not match its pods %v", d.Name, d.Spec.Selector.MatchLabels, d.Spec.Template.Labels)
	}
	return c
}

func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func envDuration(t *testing.T, c corev1.Container, name string) time.Duration {
	t.Helper()
	e, ok := containerEnv(c, name)
	if !ok {
		t.Fatalf("%s: %s not set (the grace period is computed from it)", c.Name, name)
	}
	d, err := time.ParseDuration(e.Value)
	if err != nil {
		t.Fatalf("%s: %s: %v", c.Name, name, err)
	}
	return d
}

func TestK8sGateway(t *testing.T) {
	objs := loadK8s(t)
	d := only[appsv1.Deployment](t, objs, "gateway")
	c := checkProgramContainer(t, d, "gateway")
	listen, _ := containerEnv(c, "LISTEN_ADDR")
	port := portOf(t, listen.Value)
	if e, _ := containerEnv(c, "INSECURE_HTTP"); e.Value != "true" {
		t.Error("INSECURE_HTTP is not true: the Ingress terminates TLS")
	}
	if tok, ok := containerEnv(c, "API_TOKEN"); !ok || tok.ValueFrom == nil || tok.ValueFrom.SecretKeyRef == nil ||
		tok.ValueFrom.SecretKeyRef.Name != "productwatch-api-token" {
		t.Error("API_TOKEN is not taken from the Secret productwatch-api-token")
	}
	checkProbe(t, c, "readiness", c.ReadinessProbe, "/readyz", port)
	checkProbe(t, c, "liveness", c.LivenessProbe, "/healthz", port)
	metrics, _ := containerEnv(c, "METRICS_ADDR")
	if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return int(p.ContainerPort) == portOf(t, metrics.Value) }) {
		t.Errorf("METRICS_ADDR %s is not a container port", metrics.Value)
	}

	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil {
		t.Fatal("no preStop hook: the pod would get SIGTERM while still in the load balancers")
	}
	var preStop time.Duration
	switch h := c.Lifecycle.PreStop; {
	case h.Sleep != nil:
		preStop = time.Duration(h.Sleep.Seconds) * time.Second
	case h.Exec != nil:
		t.Errorf("preStop exec %v: the image has no shell or sleep", h.Exec.Command)
	}
	grace := d.Spec.Template.Spec.TerminationGracePeriodSeconds
	need := preStop + envDuration(t, c, "DRAIN_WINDOW") + envDuration(t, c, "SHUTDOWN_TIMEOUT")
	if grace == nil || time.Duration(*grace)*time.Second <= need {
		t.Errorf("terminationGracePeriodSeconds %v is not longer than preStop + DRAIN_WINDOW + SHUTDOWN_TIMEOUT (%v)", grace, need)
	}
	if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
		t.Errorf("gateway replicas %v, want at least 2", d.Spec.Replicas)
	}

	svc := only[corev1.Service](t, objs, "gateway")
	if !selects(svc.Spec.Selector, d.Spec.Template.Labels) {
		t.Errorf("Service selector %v does not select the gateway pods", svc.Spec.Selector)
	}
	var httpPort corev1.ServicePort
	for _, p := range svc.Spec.Ports {
		if portNumber(t, c, p.TargetPort) == port {
			httpPort = p
		}
	}
	if httpPort.Port == 0 {
		t.Fatalf("Service ports %+v do not reach LISTEN_ADDR %d", svc.Spec.Ports, port)
	}

	ing := only[networkingv1.Ingress](t, objs, "gateway")
	if len(ing.Spec.TLS) == 0 || ing.Spec.TLS[0].SecretName == "" {
		t.Error("Ingress without TLS")
	}
	for _, rule := range ing.Spec.Rules {
		for _, p := range rule.HTTP.Paths {
			b := p.Backend.Service
			if b == nil || b.Name != svc.Name || (b.Port.Name != httpPort.Name && b.Port.Number != httpPort.Port) {
				t.Errorf("Ingress path %s does not go to the gateway Service's HTTP port", p.Path)
			}
		}
	}
	ping := 30 * time.Second // WS_PING_INTERVAL's default
	for _, a := range []string{"nginx.ingress.kubernetes.io/proxy-read-timeout", "nginx.ingress.kubernetes.io/proxy-send-timeout"} {
		secs, err := strconv.Atoi(ing.Annotations[a])
		if err != nil || time.Duration(secs)*time.Second < 10*ping {
			t.Errorf("%s = %q: a WebSocket idle timeout must be well above the ping interval (%v)", a, ing.Annotations[a], ping)
		}
	}

	hpa := only[autoscalingv2.HorizontalPodAutoscaler](t, objs, "gateway")
	if ref := hpa.Spec.ScaleTargetRef; ref.Kind != "Deployment" || ref.Name != d.Name || ref.APIVersion != "apps/v1" {
		t.Errorf("HPA scales %+v, not the gateway Deployment", ref)
	}
	if hpa.Spec.MinReplicas == nil || *hpa.Spec.MinReplicas < 2 || hpa.Spec.MaxReplicas <= *hpa.Spec.MinReplicas || len(hpa.Spec.Metrics) == 0 {
		t.Errorf("HPA min %v max %d metrics %d", hpa.Spec.MinReplicas, hpa.Spec.MaxReplicas, len(hpa.Spec.Metrics))
	}
	if hpa.Spec.Behavior == nil || hpa.Spec.Behavior.ScaleDown == nil {
		t.Error("HPA without a scale-down policy: every removed gateway makes its clients reconnect at once")
	}

	pdb := only[policyv1.PodDisruptionBudget](t, objs, "gateway")
	if pdb.Spec.Selector == nil || !selects(pdb.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
		t.Error("gateway PDB does not select the gateway pods")
	}
	if pdb.Spec.MaxUnavailable == nil && pdb.Spec.MinAvailable == nil {
		t.Error("gateway PDB sets neither maxUnavailable nor minAvailable")
	}
}

func TestK8sBridge(t *testing.T) {
	objs := loadK8s(t)
	d := only[appsv1.Deployment](t, objs, "bridge")
	c := checkProgramContainer(t, d, "bridge")
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
		t.Errorf("bridge replicas %v, want 2 (one leads, one stands by)", d.Spec.Replicas)
	}
	metrics, _ := containerEnv(c, "METRICS_ADDR")
	port := portOf(t, metrics.Value)
	checkProbe(t, c, "readiness", c.ReadinessProbe, "/readyz", port)
	checkProbe(t, c, "liveness", c.LivenessProbe, "/healthz", port)
	if r, _ := containerEnv(c, "STREAM_REPLICAS"); r.Value != "3" {
		t.Errorf("STREAM_REPLICAS %q, want 3 (the NATS chart runs 3 nodes)", r.Value)
	}
	pdb := only[policyv1.PodDisruptionBudget](t, objs, "bridge")
	if pdb.Spec.Selector == nil || !selects(pdb.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
		t.Error("bridge PDB does not select the bridge pods")
	}
}

// secretRefs lists every Secret key the Deployments read.
func secretRefs(objs k8sObjects) map[string]bool {
	refs := map[string]bool{}
	for _, list := range objs {
		for _, o := range list {
			if d, ok := o.(*appsv1.Deployment); ok {
				for _, c := range d.Spec.Template.Spec.Containers {
					for _, e := range c.Env {
						if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
							refs[e.ValueFrom.SecretKeyRef.Name+"/"+e.ValueFrom.SecretKeyRef.Key] = true
						}
					}
				}
			}
		}
	}
	return refs
}

func TestK8sSecrets(t *testing.T) {
	objs := loadK8s(t)
	defined := map[string]bool{}
	for _, o := range objs["secrets.example.yaml"] {
		s, ok := o.(*corev1.Secret)
		if !ok {
			t.Fatalf("secrets.example.yaml holds a %T", o)
		}
		for k, v := range s.StringData {
			defined[s.Name+"/"+k] = true
			if !strings.Contains(v, "REPLACE-ME") {
				t.Errorf("%s/%s: %q is not an obvious placeholder", s.Name, k, v)
			}
		}
		if len(s.Data) > 0 {
			t.Errorf("%s: base64 data in an example", s.Name)
		}
	}
	refs := secretRefs(objs)
	for _, ref := range natsValuesSecretRefs(t) {
		refs[ref] = true
	}
	for ref := range refs {
		if !defined[ref] {
			t.Errorf("secret key %s is used but not in secrets.example.yaml (which says how to create it)", ref)
		}
	}
	for _, want := range []string{"productwatch-api-token/token", "productwatch-nats/bridge-password",
		"productwatch-nats/gateway-password", "productwatch-nats/debug-password"} {
		if !refs[want] {
			t.Errorf("nothing reads %s", want)
		}
	}
	// Secrets of real values never live in the repository.
	for name, list := range objs {
		for _, o := range list {
			if _, ok := o.(*corev1.Secret); ok && name != "secrets.example.yaml" {
				t.Errorf("%s holds a Secret: create Secrets with kubectl (secrets.example.yaml)", name)
			}
		}
	}
}
