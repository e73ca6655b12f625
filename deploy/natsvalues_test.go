package deploy

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// natsValues reads deploy/k8s/nats-values.yaml as the generic tree Helm
// merges into the chart's values.
func natsValues(t *testing.T) map[string]any {
	t.Helper()
	var v map[string]any
	if err := yaml.Unmarshal([]byte(readFile(t, k8sDir+"/nats-values.yaml")), &v); err != nil {
		t.Fatalf("nats-values.yaml: %v", err)
	}
	return v
}

// at walks a values tree along keys.
func at(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

// natsValuesSecretRefs lists the Secret keys the NATS pods read
// (container.env).
func natsValuesSecretRefs(t *testing.T) []string {
	t.Helper()
	var refs []string
	env, _ := at(natsValues(t), "container", "env").(map[string]any)
	for _, e := range env {
		name, _ := at(e, "valueFrom", "secretKeyRef", "name").(string)
		key, _ := at(e, "valueFrom", "secretKeyRef", "key").(string)
		if name != "" {
			refs = append(refs, name+"/"+key)
		}
	}
	return refs
}

var helmEnvRef = regexp.MustCompile(`^<< \$([A-Z][A-Z0-9_]*) >>$`)

func strings_(v any) []string {
	list, _ := v.([]any)
	var out []string
	for _, x := range list {
		s, _ := x.(string)
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

func TestNATSHelmValues(t *testing.T) {
	v := natsValues(t)
	for _, c := range []struct {
		keys []string
		want any
	}{
		{[]string{"config", "cluster", "enabled"}, true},
		{[]string{"config", "cluster", "replicas"}, float64(3)},
		{[]string{"config", "jetstream", "enabled"}, true},
		{[]string{"config", "jetstream", "fileStore", "enabled"}, true},
		{[]string{"config", "jetstream", "fileStore", "pvc", "enabled"}, true},
	} {
		if got := at(v, c.keys...); got != c.want {
			t.Errorf("%s = %v, want %v", strings.Join(c.keys, "."), got, c.want)
		}
	}

	// The users: the same as compose's NATS (deploy/compose/nats-auth.conf),
	// with passwords from the environment, which comes from the Secret.
	users, _ := at(v, "config", "merge", "authorization", "users").([]any)
	env, _ := at(v, "container", "env").(map[string]any)
	got := map[string]permissions{}
	for _, u := range users {
		name, _ := at(u, "user").(string)
		pw, _ := at(u, "password").(string)
		m := helmEnvRef.FindStringSubmatch(pw)
		if m == nil {
			t.Errorf("user %s: password %q is not << $VAR >>, an environment reference", name, pw)
			continue
		}
		ref, _ := at(env, m[1], "valueFrom", "secretKeyRef", "key").(string)
		if ref != name+"-password" {
			t.Errorf("user %s: $%s is not the Secret key %s-password", name, m[1], name)
		}
		got[name] = permissions{
			PubAllow: strings_(at(u, "permissions", "publish", "allow")),
			PubDeny:  strings_(at(u, "permissions", "publish", "deny")),
			SubAllow: strings_(at(u, "permissions", "subscribe", "allow")),
			SubDeny:  strings_(at(u, "permissions", "subscribe", "deny")),
		}
	}
	if at(v, "config", "merge", "no_auth_user") != nil {
		t.Error("no_auth_user lets anonymous clients in")
	}
	want := userPermissions(natsNode(t, mustLoadCompose(t), "nats-1"))
	if len(got) != 3 {
		t.Errorf("users %v, want bridge, gateway, debug", slices.Sorted(func(yield func(string) bool) {
			for k := range got {
				if !yield(k) {
					return
				}
			}
		}))
	}
	for name, w := range want {
		if g := got[name]; !slices.Equal(g.PubAllow, w.PubAllow) || !slices.Equal(g.PubDeny, w.PubDeny) ||
			!slices.Equal(g.SubAllow, w.SubAllow) || !slices.Equal(g.SubDeny, w.SubDeny) {
			t.Errorf("user %s: Helm permissions %+v differ from compose's %+v", name, g, w)
		}
	}
}

// TestNATSHelmValuesKeysInChart checks that every key of nats-values.yaml is
// one the chart has (a misspelt key is silently ignored by Helm). The chart
// is not in this repository: point NATS_HELM_VALUES at its values, e.g.
//
//	helm show values nats/nats --version 2.14.2 > /tmp/nats-chart-values.yaml
//	NATS_HELM_VALUES=/tmp/nats-chart-values.yaml go test -run KeysInChart ./deploy/
func TestNATSHelmValuesKeysInChart(t *testing.T) {
	file := os.Getenv("NATS_HELM_VALUES")
	if file == "" {
		t.Skip("NATS_HELM_VALUES not set: the chart's own values.yaml is needed to compare keys")
	}
	src, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var chart map[string]any
	if err := yaml.Unmarshal(src, &chart); err != nil {
		t.Fatal(err)
	}
	for _, p := range missingKeys(natsValues(t), chart, "") {
		t.Errorf("nats-values.yaml sets %s, which the chart does not have", p)
	}
	// The comparison itself finds a misspelt key.
	if got := missingKeys(map[string]any{"config": map[string]any{"clustr": true}}, chart, ""); len(got) != 1 {
		t.Errorf("a misspelt key was not found: %v", got)
	}
}

// missingKeys lists the key paths of mine that chart lacks. Below a key
// whose chart value is an empty map or null (free-form: merge, env,
// topologySpreadConstraints), anything goes.
func missingKeys(mine, chart map[string]any, prefix string) []string {
	var out []string
	for k, v := range mine {
		cv, ok := chart[k]
		if !ok {
			out = append(out, prefix+k)
			continue
		}
		sub, isMap := v.(map[string]any)
		csub, chartMap := cv.(map[string]any)
		if isMap && chartMap && len(csub) > 0 {
			out = append(out, missingKeys(sub, csub, prefix+k+".")...)
		}
	}
	return out
}
