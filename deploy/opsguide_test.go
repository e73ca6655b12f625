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
