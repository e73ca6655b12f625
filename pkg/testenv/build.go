package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// buildTimeout bounds one `go build` of a program (a cold -race build
// included).
const buildTimeout = 5 * time.Minute

// modulePath is the module the programs are built from.
const modulePath = "github.com/productwatch/productwatch"

// Program returns the path of the program in the module's directory dir
// ("bridge", "gateway"), built once per test process into a temporary
// directory that [Main] removes. Every caller after a failed build fails with
// that build's error. It fails the test if the package's TestMain does not
// call [Main].
func Program(t testing.TB, dir string) string {
	t.Helper()
	return program(t, dir, false)
}

// RaceProgram is [Program], built with -race when the tests run with -race,
// so that the program's data races show in its output (a -race program is
// slower: timing-sensitive tests want [Program]).
func RaceProgram(t testing.TB, dir string) string {
	t.Helper()
	return program(t, dir, raceEnabled)
}

func program(t testing.TB, dir string, race bool) string {
	t.Helper()
	key := dir
	if race {
		key += " -race"
	}
	shared.mu.Lock()
	if !shared.mainRunning {
		shared.mu.Unlock()
		t.Fatal("testenv.Program: the package's TestMain must call testenv.Main, which removes the built programs")
	}
	build, ok := shared.programs[key]
	if !ok {
		build = sync.OnceValues(func() (string, error) { return shared.build(dir, race) })
		if shared.programs == nil {
			shared.programs = make(map[string]func() (string, error))
		}
		shared.programs[key] = build
	}
	shared.mu.Unlock()
	path, err := build()
	if err != nil {
		t.Fatalf("build %s: %v", dir, err)
	}
	return path
}

// build runs go build for the program in dir.
func (e *environment) build(dir string, race bool) (string, error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("find the go command: %w", err)
	}
	tmp, err := os.MkdirTemp("", "pwtest-"+filepath.Base(dir)+"-")
	if err != nil {
		return "", err
	}
	e.mu.Lock()
	e.tempDirs = append(e.tempDirs, tmp)
	e.mu.Unlock()
	bin := filepath.Join(tmp, filepath.Base(dir))
	args := []string{"build", "-buildvcs=false", "-o", bin}
	if race {
		args = append(args, "-race")
	}
	args = append(args, modulePath+"/"+dir)
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, goTool, args...).CombinedOutput()
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			err = fmt.Errorf("%w (after %v)", err, buildTimeout)
		}
		return "", fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return bin, nil
}
