package secretfile

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

type creds struct {
	A string `json:"a"`
	B string `json:"b"`
	C string `json:"c,omitempty"` // not a secret Keep manages
}

// TestKeep: generated once and kept, mode 0600 (made so again when
// loosened), a short one replaced alone, a corrupt file refused and left.
func TestKeep(t *testing.T) {
	path := filepath.Join(t.TempDir(), "secrets.json")
	var first creds
	if err := Keep(path, &first, &first.A, &first.B); err != nil {
		t.Fatal(err)
	}
	if len(first.A) < MinLength || len(first.B) < MinLength || first.A == first.B || first.C != "" {
		t.Fatalf("generated %+v", first)
	}
	mode := func() os.FileMode {
		info, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return info.Mode().Perm()
	}
	if m := mode(); m != 0o600 {
		t.Errorf("mode %v, want 0600", m)
	}

	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	var again creds
	if err := Keep(path, &again, &again.A, &again.B); err != nil || again != first {
		t.Fatalf("second Keep = %+v, %v; want %+v", again, err, first)
	}
	if m := mode(); m != 0o600 {
		t.Errorf("a loosened file stays %v, want 0600", m)
	}

	if err := WriteJSON(path, creds{A: first.A, B: "short", C: "kept"}); err != nil {
		t.Fatal(err)
	}
	var mended creds
	if err := Keep(path, &mended, &mended.A, &mended.B); err != nil {
		t.Fatal(err)
	}
	if mended.A != first.A || len(mended.B) < MinLength || mended.C != "kept" {
		t.Errorf("after a short secret: %+v; want A kept, B new, C as it was", mended)
	}

	broken := []byte("{not json")
	if err := os.WriteFile(path, broken, 0o600); err != nil {
		t.Fatal(err)
	}
	var none creds
	if err := Keep(path, &none, &none.A); !errors.Is(err, ErrCorrupt) {
		t.Errorf("corrupt file: %v, want ErrCorrupt", err)
	}
	if data, _ := os.ReadFile(path); string(data) != string(broken) {
		t.Errorf("a corrupt file was overwritten: %q", data)
	}
}

// TestWrite: a leftover file's loose mode does not carry over, and no
// temporary file stays behind.
func TestWrite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "token")
	if err := os.WriteFile(path, []byte("old"), 0o666); err != nil {
		t.Fatal(err)
	}
	if err := Write(path, []byte("new\n")); err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(path)
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("%v, mode %v; want 0600", err, info.Mode().Perm())
	}
	if data, _ := os.ReadFile(path); string(data) != "new\n" {
		t.Errorf("content %q", data)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("%d files in the directory, want 1 (no temporary left)", len(entries))
	}
}
