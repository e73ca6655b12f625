package deploy

import (
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/productwatch/productwatch/pkg/testenv"
)

// repoRoot is the repository, one level above this package.
const repoRoot = ".."

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// runtimeEnv are variables read by the Go runtime rather than by the
// programs' flags; deployments may set them too.
var runtimeEnv = map[string]bool{"GOMEMLIMIT": true, "GOGC": true, "GOMAXPROCS": true, "GODEBUG": true}

// envInUsage matches how pkg/envflag names a flag's variable in its usage.
var envInUsage = regexp.MustCompile(`\(env ([A-Z][A-Z0-9_]*)\)`)

// usageEnv holds, per program, the environment variables it understands,
// read once per test binary from its -h output.
var usageEnv = struct {
	sync.Mutex
	vars map[string]map[string]bool
}{vars: map[string]map[string]bool{}}

// envOf returns the variables program reads (its -h output lists them; the
// program is built once per test process, testenv.Program), failing the
// test when they cannot be had.
func envOf(t *testing.T, program string) map[string]bool {
	t.Helper()
	usageEnv.Lock()
	defer usageEnv.Unlock()
	if vars, ok := usageEnv.vars[program]; ok {
		return vars
	}
	// -h prints the usage and exits 2; the output is what matters.
	help := exec.Command(testenv.Program(t, program), "-h")
	help.Env = []string{"PATH=" + os.Getenv("PATH")}
	usage, _ := help.CombinedOutput()
	vars := map[string]bool{}
	for _, m := range envInUsage.FindAllStringSubmatch(string(usage), -1) {
		vars[m[1]] = true
	}
	if !vars["DATABASE_URL"] || !vars["NATS_URL"] {
		t.Fatalf("%s -h lists no DATABASE_URL or NATS_URL; its usage format changed?\n%s", program, usage)
	}
	usageEnv.vars[program] = vars
	return vars
}

// unknownEnv lists the names in set that program does not read.
func unknownEnv(t *testing.T, program string, names []string) []string {
	t.Helper()
	known := envOf(t, program)
	var unknown []string
	for _, name := range names {
		if !known[name] && !runtimeEnv[name] {
			unknown = append(unknown, name)
		}
	}
	sort.Strings(unknown)
	return unknown
}

func TestProgramEnvListing(t *testing.T) {
	// The listing itself: both programs share the database and log settings,
	// and each has its own.
	for program, want := range map[string][]string{
		"bridge":  {"DATABASE_URL", "NATS_URL", "METRICS_ADDR", "STREAM_REPLICAS", "LOG_FORMAT"},
		"gateway": {"DATABASE_URL", "NATS_URL", "LISTEN_ADDR", "INSECURE_HTTP", "API_TOKEN", "DRAIN_WINDOW", "SHUTDOWN_TIMEOUT"},
	} {
		if missing := unknownEnv(t, program, want); len(missing) > 0 {
			t.Errorf("%s -h does not list %s", program, strings.Join(missing, ", "))
		}
	}
	if unknown := unknownEnv(t, "gateway", []string{"STREAM_REPLICAS", "NO_SUCH_SETTING"}); len(unknown) != 2 {
		t.Errorf("the gateway claims to read %v; the listing is not telling the programs apart", unknown)
	}
}
