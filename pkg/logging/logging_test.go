package logging

import (
	"bytes"
	"strings"
	"testing"
)

func TestNew(t *testing.T) {
	tests := []struct {
		name, level, format string
		wantErr             bool
		wantSub             string
	}{
		{name: "defaults", wantSub: `"msg":"hello"`},
		{name: "text debug", level: "debug", format: "text", wantSub: "msg=hello"},
		{name: "bad level", level: "loud", wantErr: true},
		{name: "bad format", format: "xml", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			logger, err := New(&buf, tc.level, tc.format)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			logger.Info("hello")
			if !strings.Contains(buf.String(), tc.wantSub) {
				t.Errorf("log %q lacks %q", buf.String(), tc.wantSub)
			}
		})
	}
}
