package protocol

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestDecode(t *testing.T) {
	tests := []struct {
		name     string
		frame    string
		want     string // fmt of the command's fields
		wantCode string
		wantID   string
	}{
		{name: "seed subscribe", frame: `{"command":"subscribe","productIDs":[3,1,2]}`, want: "subscribe [1 2 3] false map[] "},
		{name: "duplicates removed", frame: `{"command":"subscribe","productIDs":[2,2,1]}`, want: "subscribe [1 2] false map[] "},
		{name: "unsubscribe", frame: `{"command":"unsubscribe","productIDs":[2]}`, want: "unsubscribe [2] false map[] "},
		{name: "resume", frame: `{"command":"subscribe","productIDs":[1,3],"versions":{"1":7,"3":0},"snapshot":true,"id":"a1"}`, want: `subscribe [1 3] true map[1:7 3:0] "a1"`},
		{name: "numeric id", frame: `{"id":42,"command":"subscribe","productIDs":[]}`, want: "subscribe [] false map[] 42"},
		{name: "null fields", frame: `{"id":null,"command":"subscribe","productIDs":[1],"snapshot":null,"versions":null}`, want: "subscribe [1] false map[] "},
		{name: "not JSON", frame: `subscribe 1`, wantCode: CodeInvalidJSON},
		{name: "array", frame: `[1]`, wantCode: CodeInvalidJSON},
		{name: "null", frame: `null`, wantCode: CodeInvalidJSON},
		{name: "invalid utf-8", frame: "{\"command\":\"\xff\"}", wantCode: CodeInvalidJSON},
		{name: "unknown command", frame: `{"command":"subscribeAll","productIDs":[1],"id":"x"}`, wantCode: CodeUnknownCommand, wantID: `"x"`},
		{name: "no command", frame: `{"productIDs":[1]}`, wantCode: CodeInvalidCommand},
		{name: "command not a string", frame: `{"command":1,"productIDs":[1]}`, wantCode: CodeInvalidCommand},
		{name: "unknown field", frame: `{"command":"subscribe","productIDs":[1],"every":true}`, wantCode: CodeInvalidCommand},
		{name: "all", frame: `{"command":"subscribe","all":true}`, want: "subscribe [] false map[]  all since -1"},
		{name: "all since", frame: `{"command":"subscribe","all":true,"since":42,"id":"r"}`, want: `subscribe [] false map[] "r" all since 42`},
		{name: "all since zero", frame: `{"command":"subscribe","all":true,"since":0}`, want: "subscribe [] false map[]  all since 0"},
		{name: "unsubscribe all", frame: `{"command":"unsubscribe","all":true}`, want: "unsubscribe [] false map[]  all since -1"},
		{name: "all false is per product", frame: `{"command":"subscribe","all":false,"productIDs":[1]}`, want: "subscribe [1] false map[] "},
		{name: "all with ids", frame: `{"command":"subscribe","all":true,"productIDs":[1]}`, wantCode: CodeInvalidCommand},
		{name: "all with snapshot", frame: `{"command":"subscribe","all":true,"snapshot":true}`, wantCode: CodeInvalidCommand},
		{name: "all with versions", frame: `{"command":"subscribe","all":true,"versions":{"1":1}}`, wantCode: CodeInvalidCommand},
		{name: "all not bool", frame: `{"command":"subscribe","all":1}`, wantCode: CodeInvalidCommand},
		{name: "since without all", frame: `{"command":"subscribe","productIDs":[1],"since":3}`, wantCode: CodeInvalidCommand},
		{name: "since negative", frame: `{"command":"subscribe","all":true,"since":-1}`, wantCode: CodeInvalidCommand},
		{name: "since fraction", frame: `{"command":"subscribe","all":true,"since":1.5}`, wantCode: CodeInvalidCommand},
		{name: "since too big", frame: `{"command":"subscribe","all":true,"since":9223372036854775808}`, wantCode: CodeInvalidCommand},
		{name: "since as string", frame: `{"command":"subscribe","all":true,"since":"3"}`, wantCode: CodeInvalidCommand},
		{name: "since on unsubscribe", frame: `{"command":"unsubscribe","all":true,"since":3}`, wantCode: CodeInvalidCommand},
		{name: "no ids", frame: `{"command":"subscribe"}`, wantCode: CodeInvalidCommand},
		{name: "ids not an array", frame: `{"command":"subscribe","productIDs":"1"}`, wantCode: CodeInvalidProductID},
		{name: "id zero", frame: `{"command":"subscribe","productIDs":[0]}`, wantCode: CodeInvalidProductID},
		{name: "id negative", frame: `{"command":"subscribe","productIDs":[-4]}`, wantCode: CodeInvalidProductID},
		{name: "id fraction", frame: `{"command":"subscribe","productIDs":[1.5]}`, wantCode: CodeInvalidProductID},
		{name: "id too big", frame: `{"command":"subscribe","productIDs":[9223372036854775808]}`, wantCode: CodeInvalidProductID},
		{name: "id as string", frame: `{"command":"subscribe","productIDs":["1"]}`, wantCode: CodeInvalidProductID},
		{name: "too many ids", frame: `{"command":"subscribe","productIDs":[1,2,3,4,5,6]}`, wantCode: CodeTooManyIDs},
		{name: "version of another product", frame: `{"command":"subscribe","productIDs":[1],"versions":{"2":1}}`, wantCode: CodeInvalidCommand},
		{name: "negative version", frame: `{"command":"subscribe","productIDs":[1],"versions":{"1":-1}}`, wantCode: CodeInvalidCommand},
		{name: "versions on unsubscribe", frame: `{"command":"unsubscribe","productIDs":[1],"versions":{"1":1}}`, wantCode: CodeInvalidCommand},
		{name: "object id", frame: `{"id":{"a":1},"command":"subscribe","productIDs":[1]}`, wantCode: CodeInvalidCommand},
		{name: "long id", frame: `{"id":"` + strings.Repeat("x", 80) + `","command":"subscribe","productIDs":[1]}`, wantCode: CodeInvalidCommand},
		{name: "snapshot not bool", frame: `{"command":"subscribe","productIDs":[1],"snapshot":"yes"}`, wantCode: CodeInvalidCommand},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd, err := Decode([]byte(tc.frame), 5)
			if tc.wantCode != "" {
				var perr *Error
				if !errors.As(err, &perr) || perr.Code != tc.wantCode || perr.Message == "" || string(perr.ID) != tc.wantID {
					t.Fatalf("Decode error = %#v, want code %s id %s", err, tc.wantCode, tc.wantID)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cmd.Versions == nil {
				cmd.Versions = map[int64]int64{}
			}
			ids := cmd.ProductIDs
			if ids == nil {
				ids = []int64{}
			}
			got := fmt.Sprintf("%s %v %v %v %s", cmd.Name, ids, cmd.Snapshot, cmd.Versions, cmd.ID)
			if cmd.All {
				got += fmt.Sprintf(" all since %d", cmd.Since)
			}
			if got != tc.want {
				t.Errorf("Decode = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestAppend(t *testing.T) {
	ack := AppendAck(nil, json.RawMessage(`"a 1"`), Subscribe, []int64{1, 2})
	if string(ack) != `{"type":"ack","id":"a 1","command":"subscribe","productIDs":[1,2]}` {
		t.Errorf("ack %s", ack)
	}
	if a := AppendAllAck(nil, nil, Subscribe, 12, 30); string(a) != `{"type":"ack","command":"subscribe","productIDs":[],"all":true,"since":12,"seq":30}` {
		t.Errorf("all ack %s", a)
	}
	if a := AppendAllAck(nil, json.RawMessage(`1`), Unsubscribe, -1, 0); string(a) != `{"type":"ack","id":1,"command":"unsubscribe","productIDs":[],"all":true}` {
		t.Errorf("all ack %s", a)
	}
	if a := AppendAllError(nil, nil, CodeResync, "reload"); string(a) != `{"type":"error","code":"resync","message":"reload","all":true}` {
		t.Errorf("all error %s", a)
	}
	e := AppendError(nil, nil, CodeRateLimited, `slow "down"`, nil)
	if string(e) != `{"type":"error","code":"rate_limited","message":"slow \"down\""}` {
		t.Errorf("error %s", e)
	}
	e = AppendError(nil, json.RawMessage(` 7 `), CodeNotFound, "no such product", []int64{9})
	var v map[string]any
	if err := json.Unmarshal(e, &v); err != nil || v["id"] != float64(7) || v["productIDs"] == nil {
		t.Errorf("error with ids %s: %v", e, err)
	}
}

// FuzzDecode: no frame makes Decode panic; every refusal is an *Error with a
// known code; every accepted command respects the limits; the answers built
// from whatever id was accepted are valid JSON.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"command":"subscribe","productIDs":[1,2,3]}`, `{"command":"unsubscribe","productIDs":[2]}`,
		`{"command":"subscribe","productIDs":[1],"versions":{"1":7},"snapshot":true,"id":"x"}`,
		`{"id":1e3,"command":"subscribe","productIDs":[]}`, `[]`, `null`, `{"command":"subscribe","productIDs":[9223372036854775807]}`,
		`{"command":"subscribe","productIDs":[1],"versions":{"01":1}}`, "{\"id\":\"\\u0000\",\"command\":\"x\"}",
		`{"command":"subscribe","all":true}`, `{"command":"subscribe","all":true,"since":7,"id":"r"}`,
		`{"command":"unsubscribe","all":true}`, `{"command":"subscribe","all":true,"since":-1}`,
		`{"command":"subscribe","all":true,"productIDs":[1]}`, `{"command":"subscribe","all":false,"since":0,"productIDs":[]}`,
	} {
		f.Add([]byte(s))
	}
	codes := map[string]bool{CodeInvalidJSON: true, CodeInvalidCommand: true, CodeUnknownCommand: true, CodeInvalidProductID: true, CodeTooManyIDs: true}
	f.Fuzz(func(t *testing.T, frame []byte) {
		cmd, err := Decode(frame, 100)
		if err != nil {
			var perr *Error
			if !errors.As(err, &perr) || !codes[perr.Code] || perr.Message == "" {
				t.Fatalf("bad refusal %#v", err)
			}
			if !json.Valid(AppendError(nil, perr.ID, perr.Code, perr.Message, nil)) {
				t.Fatalf("error answer is not JSON for id %q", perr.ID)
			}
			return
		}
		if cmd.Name != Subscribe && cmd.Name != Unsubscribe || len(cmd.ProductIDs) > 100 {
			t.Fatalf("accepted %+v", cmd)
		}
		if cmd.All && (len(cmd.ProductIDs) > 0 || cmd.Snapshot || len(cmd.Versions) > 0 || cmd.Since < -1 || cmd.Name == Unsubscribe && cmd.Since != -1) ||
			!cmd.All && cmd.Since != -1 {
			t.Fatalf("watch-all fields do not fit: %+v", cmd)
		}
		if !json.Valid(AppendAllAck(nil, cmd.ID, cmd.Name, cmd.Since, 5)) || !json.Valid(AppendAllError(nil, cmd.ID, CodeResync, "x")) {
			t.Fatalf("watch-all answers are not JSON for id %q", cmd.ID)
		}
		for i, id := range cmd.ProductIDs {
			if id < 1 || i > 0 && id <= cmd.ProductIDs[i-1] {
				t.Fatalf("ids not positive, unique and sorted: %v", cmd.ProductIDs)
			}
		}
		for id, v := range cmd.Versions {
			if v < 0 || !contains(cmd.ProductIDs, id) {
				t.Fatalf("versions %v do not fit ids %v", cmd.Versions, cmd.ProductIDs)
			}
		}
		if !json.Valid(AppendAck(nil, cmd.ID, cmd.Name, cmd.ProductIDs)) {
			t.Fatalf("ack is not JSON for id %q", cmd.ID)
		}
	})
}

func contains(ids []int64, id int64) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}
