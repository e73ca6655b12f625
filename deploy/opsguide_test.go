package deploy

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// metricName matches productwatch's own metric names in prose.
var metricName = regexp.MustCompile(`productwatch_(bridge|ws|http)_[a-z_]+[a-z]`)

// TestOpsGuideMetricNames checks that every productwatch metric the
// operations guide tells people to alert on is one the programs export:
// each name's part after its prefix must be a string in the program's
// sources (metrics are registered as prefix + "name"), histogram series
// suffixes aside.
func TestOpsGuideMetricNames(t *testing.T) {
	guide := readFile(t, "deploy/README.md")
	names := metricName.FindAllString(guide, -1)
	if len(names) < 10 {
		t.Fatalf("the operations guide names %d productwatch metrics; the alert table is gone?", len(names))
	}
	sources := map[string]string{}
	for _, program := range []string{"bridge", "gateway"} {
		files, err := filepath.Glob(filepath.Join(repoRoot, program, "*.go"))
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			b.Write(src)
		}
		sources[program] = b.String()
	}
	for _, name := range names {
		base := name
		for _, suffix := range []string{"_bucket", "_count", "_sum"} {
			if strings.HasSuffix(base, "_seconds"+suffix) {
				base = strings.TrimSuffix(base, suffix)
			}
		}
		program, short := "gateway", ""
		switch {
		case strings.HasPrefix(base, "productwatch_bridge_"):
			program, short = "bridge", strings.TrimPrefix(base, "productwatch_bridge_")
		case strings.HasPrefix(base, "productwatch_ws_"):
			short = strings.TrimPrefix(base, "productwatch_ws_")
		}
		src := sources[program]
		if !strings.Contains(src, `"`+base+`"`) && (short == "" || !strings.Contains(src, `"`+short+`"`)) {
			t.Errorf("deploy/README.md names %s, which %s does not export", name, program)
		}
	}
}

// TestOpsGuideSections checks the sections other tools rely on: make
// cluster-cookbook runs the nats commands of the cookbook's sh blocks
// (those marked "# denied" must be refused), and the chaos tests fill in
// their section.
func TestOpsGuideSections(t *testing.T) {
	guide := readFile(t, "deploy/README.md")
	for _, heading := range []string{"## nats CLI cookbook", "## Chaos test results", "## What to alert on", "## Credentials and their rotation"} {
		if !strings.Contains(guide, "\n"+heading+"\n") {
			t.Errorf("deploy/README.md has no section %q", heading)
		}
	}
	_, cookbook, _ := strings.Cut(guide, "\n## nats CLI cookbook\n")
	cookbook, _, _ = strings.Cut(cookbook, "\n## ")
	var allowed, denied int
	inSh := false
	for _, line := range strings.Split(cookbook, "\n") {
		switch {
		case strings.HasPrefix(line, "```"):
			inSh = !inSh && strings.TrimSpace(line) == "```sh"
		case inSh && strings.HasPrefix(line, "nats "):
			if strings.HasSuffix(strings.TrimSpace(line), "# denied") {
				denied++
			} else {
				allowed++
			}
			if strings.Contains(line, "--password") || strings.Contains(line, "--server") {
				t.Errorf("cookbook line %q names a server or password: the checked lines take them from NATS_URL, NATS_USER, NATS_PASSWORD", line)
			}
		}
	}
	if allowed < 5 || denied < 3 {
		t.Errorf("the cookbook has %d commands and %d refused ones in sh blocks; want the debug user's reads and its refusals", allowed, denied)
	}
}
