package deploy

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// secretName matches variable names that hold credentials.
var secretName = regexp.MustCompile(`(?i)(PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|PRIVATE|API_?KEY|_KEY$)`)

// imageBinaries are the programs the runtime image must hold, where the
// compose file and the manifests run them.
var imageBinaries = []string{"/usr/local/bin/bridge", "/usr/local/bin/gateway", "/usr/local/bin/probe"}

// dockerfileReport is what checkDockerfile learns about a Dockerfile.
type dockerfileReport struct {
	problems []string
	expose   []int    // ports the final stage EXPOSEs
	files    []string // paths the final stage COPYs in
}

// checkDockerfile parses src with BuildKit's parser and reports every way it
// falls short of the image productwatch wants: at least two stages, static
// Go binaries of both programs, a final stage on a minimal base running as a
// numeric non-root user, and no credentials baked into ENV or ARG.
func checkDockerfile(src string) dockerfileReport {
	var rep dockerfileReport
	fail := func(format string, args ...any) { rep.problems = append(rep.problems, fmt.Sprintf(format, args...)) }
	ast, err := parser.Parse(strings.NewReader(src))
	if err != nil {
		fail("parse: %v", err)
		return rep
	}
	lint := linter.New(&linter.Config{Warn: func(rule, _, _, msg string, _ []parser.Range) {
		fail("lint %s: %s", rule, msg)
	}})
	stages, metaArgs, err := instructions.Parse(ast.AST, lint)
	if err != nil {
		fail("instructions: %v", err)
		return rep
	}
	if len(stages) < 2 {
		fail("%d stage(s): want a build stage and a separate runtime stage", len(stages))
		return rep
	}
	checkArgs := func(where string, args []instructions.KeyValuePairOptional) {
		for _, a := range args {
			if secretName.MatchString(a.Key) {
				fail("%s: ARG %s looks like a credential: build arguments stay in the image history", where, a.Key)
			}
		}
	}
	for _, a := range metaArgs {
		checkArgs("global", a.Args)
	}

	built := map[string]bool{} // packages built with CGO_ENABLED=0
	for _, stage := range stages {
		cgoOff := false
		for _, cmd := range stage.Commands {
			switch c := cmd.(type) {
			case *instructions.EnvCommand:
				for _, kv := range c.Env {
					if secretName.MatchString(kv.Key) && kv.Value != "" {
						fail("stage %q: ENV %s holds a value that looks like a credential", stage.Name, kv.Key)
					}
					if kv.Key == "CGO_ENABLED" {
						cgoOff = kv.Value == "0"
					}
				}
			case *instructions.ArgCommand:
				checkArgs(fmt.Sprintf("stage %q", stage.Name), c.Args)
			case *instructions.RunCommand:
				line := strings.Join(c.CmdLine, " ")
				for _, m := range regexp.MustCompile(`go build [^&;]*?(\./[\w/]+)`).FindAllStringSubmatch(line, -1) {
					if cgoOff || strings.Contains(line, "CGO_ENABLED=0") {
						built[m[1]] = true
					} else {
						fail("stage %q builds %s without CGO_ENABLED=0: not a static binary", stage.Name, m[1])
					}
				}
			}
		}
	}
	for _, pkg := range []string{"./bridge", "./gateway", "./deploy/probe"} {
		if !built[pkg] {
			fail("no stage builds %s statically", pkg)
		}
	}

	final := stages[len(stages)-1]
	if !strings.Contains(final.BaseName, "distroless/static") && final.BaseName != "scratch" {
		fail("final stage is based on %q: want scratch or distroless/static (no shell, no libc)", final.BaseName)
	}
	user := ""
	for _, cmd := range final.Commands {
		switch c := cmd.(type) {
		case *instructions.UserCommand:
			user = c.User
		case *instructions.CmdCommand:
			if c.PrependShell {
				fail("CMD in shell form: the runtime image has no shell, use the JSON form")
			}
		case *instructions.EntrypointCommand:
			if c.PrependShell {
				fail("ENTRYPOINT in shell form: the runtime image has no shell, use the JSON form")
			}
		case *instructions.ExposeCommand:
			for _, p := range c.Ports {
				n, err := strconv.Atoi(strings.TrimSuffix(p, "/tcp"))
				if err != nil {
					fail("EXPOSE %s: %v", p, err)
					continue
				}
				rep.expose = append(rep.expose, n)
			}
		case *instructions.CopyCommand:
			if c.From == "" {
				fail("final stage copies %v from the build context: only build results belong in it", c.SourcePaths)
				continue
			}
			for _, src := range c.SourcePaths {
				dest := c.DestPath
				if strings.HasSuffix(dest, "/") {
					dest += filepath.Base(src)
				}
				rep.files = append(rep.files, dest)
			}
		}
	}
	uid, _, _ := strings.Cut(user, ":")
	if n, err := strconv.Atoi(uid); err != nil || n == 0 {
		fail("final stage runs as user %q: want a numeric user other than 0 (runAsNonRoot can only verify a number)", user)
	}
	for _, bin := range imageBinaries {
		if !slices.Contains(rep.files, bin) {
			fail("final stage does not copy in %s", bin)
		}
	}
	return rep
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, path))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestDockerfile(t *testing.T) {
	rep := checkDockerfile(readFile(t, "deploy/Dockerfile"))
	for _, p := range rep.problems {
		t.Error(p)
	}
	// The ports the gateway and the bridge listen on in compose and in
	// Kubernetes (checked against those files in their tests).
	for _, port := range []int{8080, 9091, 9092} {
		if !slices.Contains(rep.expose, port) {
			t.Errorf("EXPOSE lacks %d (has %v)", port, rep.expose)
		}
	}
}

// TestDockerfileChecksFail feeds checkDockerfile broken Dockerfiles, so that
// a check that can never fail is noticed.
func TestDockerfileChecksFail(t *testing.T) {
	good := readFile(t, "deploy/Dockerfile")
	tests := []struct {
		name, old, new, want string
	}{
		{"root user", "USER 65532:65532", "USER root", `runs as user "root"`},
		{"uid 0", "USER 65532:65532", "USER 0", `runs as user "0"`},
		{"no user", "USER 65532:65532", "", `runs as user ""`},
		{"secret env", "ENV CGO_ENABLED=0", "ENV CGO_ENABLED=0 API_TOKEN=abc", "ENV API_TOKEN"},
		{"secret arg", "ARG GO_VERSION=1.26", "ARG GO_VERSION=1.26\nARG NATS_PASSWORD", "ARG NATS_PASSWORD"},
		{"cgo on", "ENV CGO_ENABLED=0", "ENV CGO_ENABLED=1", "without CGO_ENABLED=0"},
		{"gateway missing", "/out/bridge /out/gateway", "/out/bridge", "does not copy in /usr/local/bin/gateway"},
		{"fat base", "gcr.io/distroless/static:nonroot", "debian:bookworm", "want scratch or distroless"},
		{"context copy", "CMD [", "COPY . /src\nCMD [", "from the build context"},
		{"shell form", "CMD [\"/usr/local/bin/gateway\"]", "CMD /usr/local/bin/gateway", "CMD in shell form"},
		{"lint", "AS build", "as build", "lint FromAsCasing"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(good, tc.old) {
				t.Fatalf("deploy/Dockerfile no longer contains %q; update this case", tc.old)
			}
			rep := checkDockerfile(strings.Replace(good, tc.old, tc.new, 1))
			if !slices.ContainsFunc(rep.problems, func(p string) bool { return strings.Contains(p, tc.want) }) {
				t.Errorf("problems %q, want one containing %q", rep.problems, tc.want)
			}
		})
	}
	single := "FROM golang:1.26\nRUN CGO_ENABLED=0 go build ./bridge\nUSER 1000\n"
	if rep := checkDockerfile(single); !slices.ContainsFunc(rep.problems, func(p string) bool { return strings.Contains(p, "1 stage") }) {
		t.Errorf("a single-stage Dockerfile passed: %q", rep.problems)
	}
}

// TestDockerignore checks that the build context keeps what go build needs
// (sources, embedded files) and drops what must never reach an image.
func TestDockerignore(t *testing.T) {
	patterns, err := ignorefile.ReadAll(strings.NewReader(readFile(t, ".dockerignore")))
	if err != nil {
		t.Fatal(err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatal(err)
	}
	for path, wantIgnored := range map[string]bool{
		"go.mod": false, "go.sum": false,
		"bridge/main.go": false, "gateway/main.go": false, "deploy/probe/main.go": false,
		"pkg/hub/hub.go": false, "migrations/00001_products.sql": false,
		"gateway/web/index.html": false, "api/openapi.yaml": false, "api/asyncapi.yaml": false,
		".git/config": true, "bin/gateway": true, ".run/api-token": true,
		"gateway/websocket_test.go": true, "deploy/k8s/secrets.example.yaml": true,
		"gateway/jstest/package.json": true, "gateway/jstest/node_modules/x/index.js": true,
	} {
		ignored, err := pm.MatchesOrParentMatches(path)
		if err != nil {
			t.Fatal(err)
		}
		if ignored != wantIgnored {
			t.Errorf("%s: ignored %v, want %v", path, ignored, wantIgnored)
		}
	}
	// Every file the programs embed must reach the build.
	for _, dir := range []string{"gateway/web", "migrations", "api"} {
		entries, err := os.ReadDir(filepath.Join(repoRoot, dir))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			path := dir + "/" + e.Name()
			if strings.HasSuffix(path, "_test.go") || e.IsDir() {
				continue
			}
			if ignored, _ := pm.MatchesOrParentMatches(path); ignored {
				t.Errorf(".dockerignore drops %s, which the build needs", path)
			}
		}
	}
}
