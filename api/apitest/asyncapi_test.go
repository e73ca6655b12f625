package apitest

import "testing"

func TestMessageValidator(t *testing.T) {
	v := NewMessageValidator(t)
	product := `{"productId":1,"manufacturer":"Apple","productName":"MacBook","pricePerUnit":"500EUR","unitsAvailable":6,"version":7,"updatedAt":"2026-11-25T01:02:03.456789Z"}`
	tests := []struct {
		schema, msg string
		ok          bool
	}{
		{"Subscribe", `{"command":"subscribe","productIDs":[1,2,3]}`, true},
		{"Subscribe", `{"command":"subscribe","productIDs":[1],"versions":{"1":7},"snapshot":true,"id":"x"}`, true},
		{"Subscribe", `{"command":"subscribe","productIDs":[0]}`, false},
		{"Subscribe", `{"command":"subscribe"}`, false},
		{"Unsubscribe", `{"command":"unsubscribe","productIDs":[2],"id":3}`, true},
		{"Subscribe", `{"command":"subscribe","all":true}`, true},
		{"Subscribe", `{"command":"subscribe","all":true,"since":12,"id":"r"}`, true},
		{"Subscribe", `{"command":"subscribe","all":true,"productIDs":[1]}`, false},
		{"Subscribe", `{"command":"subscribe","all":true,"since":-1}`, false},
		{"Subscribe", `{"command":"subscribe","productIDs":[1],"since":3}`, false},
		{"Subscribe", `{"command":"subscribe","all":false}`, false},
		{"Unsubscribe", `{"command":"unsubscribe","all":true}`, true},
		{"Unsubscribe", `{"command":"unsubscribe"}`, false},
		{"Ack", `{"type":"ack","command":"subscribe","productIDs":[],"all":true,"since":4}`, true},
		{"Ack", `{"type":"ack","command":"subscribe","productIDs":[],"all":false}`, false},
		{"Error", `{"type":"error","code":"resync","message":"reload","all":true}`, true},
		{"ChangeEvent", `{"seq":123,"action":"UPDATE","productId":1,"version":7,"changedAt":"2026-11-25T01:02:03.456789Z","product":` + product + `}`, true},
		{"ChangeEvent", `{"seq":123,"action":"MERGE","productId":1,"version":7,"changedAt":"x","product":` + product + `}`, false},
		{"ChangeEvent", `{"action":"UPDATE","productId":1,"version":7,"product":` + product + `}`, false},
		{"Snapshot", `{"action":"SNAPSHOT","productId":1,"version":7,"product":` + product + `}`, true},
		{"Ack", `{"type":"ack","id":"s1","command":"subscribe","productIDs":[1]}`, true},
		{"Error", `{"type":"error","code":"not_found","message":"no such products","productIDs":[9]}`, true},
		{"Error", `{"type":"error","code":"oops","message":"?"}`, false},
		{"EventBatch", `[{"seq":1,"action":"INSERT","productId":1,"version":1,"changedAt":"2026-11-25T01:02:03.456789Z","product":` + product + `},` +
			`{"action":"SNAPSHOT","productId":1,"version":7,"product":` + product + `}]`, true},
		{"EventBatch", `[{"action":"SNAPSHOT","productId":1,"version":7,"product":` + product + `}]`, false}, // a lone event is a plain object
		{"EventBatch", `[{"type":"ack","command":"subscribe","productIDs":[1]},{"action":"SNAPSHOT","productId":1,"version":7,"product":` + product + `}]`, false},
		{"EventBatch", `[]`, false},
	}
	for _, tc := range tests {
		if err := v.Validate(tc.schema, []byte(tc.msg)); (err == nil) != tc.ok {
			t.Errorf("%s %s: %v, want ok=%v", tc.schema, tc.msg, err, tc.ok)
		}
	}
	if v.Validate("Nope", []byte(`{}`)) == nil {
		t.Error("unknown schema accepted")
	}
}
