package ocsf

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/events"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// ---------------------------------------------------------------------------
// OCSF 1.3.0, as data.
//
// Taken from the schema sources at tag 1.3.0 of github.com/ocsf/ocsf-schema:
// events/base_event.json with includes/classification.json and
// includes/occurrence.json (activity_id, category_uid, class_uid, type_uid,
// time, metadata, severity_id); events/network/network.json, which both
// classes extend (dst_endpoint required, src_endpoint only recommended);
// events/network/http.json for 4002 (http_request and http_response
// required); profiles/security_control.json (action_id required once the
// profile is used, and records declare it in metadata.profiles); and the
// objects' own required attributes and at_least_one constraints.
//
// So for Network Activity (4001) src_endpoint is NOT required: packet events
// have one, connect events do not (the kernel event names no source
// address), and inventing one would be worse than leaving a recommended
// attribute out.
// ---------------------------------------------------------------------------

var baseRequired = []string{"activity_id", "category_uid", "class_uid", "metadata", "severity_id", "time", "type_uid"}

var classRequired = map[int][]string{
	ClassNetworkActivity: append(slices.Clone(baseRequired), "dst_endpoint", "action_id"),
	// http_response is required in 1.3.0 too, but imdsguard never sees a
	// response (a refused request gets none), so it is deliberately left
	// out (see knownOmissions); OCSF 1.4.0 made it optional.
	ClassHTTPActivity: append(slices.Clone(baseRequired), "dst_endpoint", "action_id", "http_request"),
}

// knownOmissions are required 1.3.0 attributes the output leaves out on
// purpose, each documented in docs/siem.md.
var knownOmissions = map[int][]string{
	ClassHTTPActivity: {"http_response"},
}

// objectRules are the required attributes and at_least_one constraints of
// the objects the records use, by their path in the record (when present).
var objectRules = []struct {
	path       string
	required   []string
	atLeastOne []string
}{
	{"metadata", []string{"product", "version"}, nil},
	{"metadata.product", []string{"vendor_name"}, []string{"name", "uid"}},
	{"device", []string{"type_id"}, []string{"ip", "uid", "name", "hostname", "instance_uid", "interface_uid", "interface_name"}},
	{"actor", nil, []string{"process", "user", "invoked_by", "session", "app_name", "app_uid"}},
	{"actor.process", nil, []string{"pid", "uid"}},
	{"actor.process.parent_process", nil, []string{"pid", "uid"}},
	{"actor.process.user", nil, []string{"account", "name", "uid"}},
	{"actor.user", nil, []string{"account", "name", "uid"}},
	{"actor.process.file", []string{"name", "type_id"}, nil},
	{"actor.process.container", nil, []string{"uid", "name"}},
	{"dst_endpoint", nil, []string{"ip", "uid", "name", "hostname", "svc_name", "instance_uid", "interface_uid", "interface_name"}},
	{"src_endpoint", nil, []string{"ip", "uid", "name", "hostname", "svc_name", "instance_uid", "interface_uid", "interface_name"}},
	{"connection_info", []string{"direction_id"}, nil},
	{"http_request.url", nil, []string{"url_string", "path"}},
}

// attrType is the JSON shape of every attribute a record may carry (its
// OCSF type: integer_t, long_t, timestamp_t and port_t are integers;
// string_t, ip_t, hostname_t, uuid_t are strings; user.uid is a string_t).
// An attribute not listed here is not an OCSF 1.3.0 attribute of the class
// or object, and fails the test. unmapped is checked separately.
var attrType = map[string]string{
	"activity_id": "int", "activity_name": "string",
	"category_uid": "int", "category_name": "string",
	"class_uid": "int", "class_name": "string",
	"type_uid": "int", "type_name": "string",
	"time":        "int",
	"severity_id": "int", "severity": "string",
	"action_id": "int", "action": "string",
	"disposition_id": "int", "disposition": "string",
	"status_id": "int", "status": "string", "status_code": "string", "status_detail": "string",
	"count":   "int",
	"message": "string",

	"metadata":                         "object",
	"metadata.product":                 "object",
	"metadata.product.name":            "string",
	"metadata.product.vendor_name":     "string",
	"metadata.product.version":         "string",
	"metadata.version":                 "string",
	"metadata.log_name":                "string",
	"metadata.event_code":              "string",
	"metadata.profiles":                "[]string",
	"device":                           "object",
	"device.hostname":                  "string",
	"device.instance_uid":              "string",
	"device.type_id":                   "int",
	"device.type":                      "string",
	"actor":                            "object",
	"actor.user":                       "object",
	"actor.user.uid":                   "string",
	"actor.process":                    "object",
	"actor.process.pid":                "int",
	"actor.process.name":               "string",
	"actor.process.cmd_line":           "string",
	"actor.process.file":               "object",
	"actor.process.file.name":          "string",
	"actor.process.file.path":          "string",
	"actor.process.file.type_id":       "int",
	"actor.process.file.type":          "string",
	"actor.process.parent_process":     "object",
	"actor.process.parent_process.pid": "int",
	"actor.process.user":               "object",
	"actor.process.user.uid":           "string",
	"actor.process.container":          "object",
	"actor.process.container.uid":      "string",
	"actor.process.container.name":     "string",
	"actor.process.container.runtime":  "string",
	"actor.process.container.pod_uuid": "string",
	"dst_endpoint":                     "object",
	"dst_endpoint.ip":                  "string",
	"dst_endpoint.port":                "int",
	"src_endpoint":                     "object",
	"src_endpoint.ip":                  "string",
	"src_endpoint.port":                "int",
	"src_endpoint.interface_name":      "string",
	"connection_info":                  "object",
	"connection_info.direction_id":     "int",
	"connection_info.direction":        "string",
	"connection_info.protocol_ver_id":  "int",
	"connection_info.protocol_name":    "string",
	"connection_info.protocol_num":     "int",
	"http_request":                     "object",
	"http_request.http_method":         "string",
	"http_request.url":                 "object",
	"http_request.url.scheme":          "string",
	"http_request.url.port":            "int",
	"http_request.url.path":            "string",
	"http_request.url.query_string":    "string",
	"unmapped":                         "object",
}

// enums are the OCSF 1.3.0 values (and captions) of the enumerated
// attributes the records use.
var enums = map[string]map[int64]string{
	"severity_id":                     {0: "Unknown", 1: "Informational", 2: "Low", 3: "Medium", 4: "High", 5: "Critical", 6: "Fatal", 99: "Other"},
	"action_id":                       {0: "Unknown", 1: "Allowed", 2: "Denied", 99: "Other"},
	"status_id":                       {0: "Unknown", 1: "Success", 2: "Failure", 99: "Other"},
	"disposition_id":                  {0: "Unknown", 1: "Allowed", 2: "Blocked", 3: "Quarantined", 4: "Isolated", 5: "Deleted", 6: "Dropped", 7: "Custom Action", 8: "Approved", 9: "Restored", 10: "Exonerated", 11: "Corrected", 12: "Partially Corrected", 13: "Uncorrected", 14: "Delayed", 15: "Detected", 16: "No Action", 17: "Logged", 18: "Tagged", 19: "Alert", 20: "Count", 21: "Reset", 22: "Captcha", 23: "Challenge", 24: "Access Revoked", 25: "Rejected", 26: "Unauthorized", 27: "Error", 99: "Other"},
	"device.type_id":                  {0: "Unknown", 1: "Server", 2: "Desktop", 3: "Laptop", 4: "Tablet", 5: "Mobile", 6: "Virtual", 7: "IOT", 8: "Browser", 9: "Firewall", 10: "Switch", 11: "Hub", 12: "Router", 13: "IDS", 14: "IPS", 15: "Load Balancer", 99: "Other"},
	"actor.process.file.type_id":      {0: "Unknown", 1: "Regular File", 2: "Folder", 3: "Character Device", 4: "Block Device", 5: "Local Socket", 6: "Named Pipe", 7: "Symbolic Link", 99: "Other"},
	"connection_info.direction_id":    {0: "Unknown", 1: "Inbound", 2: "Outbound", 3: "Lateral", 99: "Other"},
	"connection_info.protocol_ver_id": {0: "Unknown", 4: "Internet Protocol version 4 (IPv4)", 6: "Internet Protocol version 6 (IPv6)", 99: "Other"},
}

// captionOf names the attribute holding an enum's caption.
var captionOf = map[string]string{
	"severity_id":                  "severity",
	"action_id":                    "action",
	"status_id":                    "status",
	"disposition_id":               "disposition",
	"device.type_id":               "device.type",
	"actor.process.file.type_id":   "actor.process.file.type",
	"connection_info.direction_id": "connection_info.direction",
}

var activities = map[int]map[int64]string{
	ClassNetworkActivity: {0: "Unknown", 1: "Open", 2: "Close", 3: "Reset", 4: "Fail", 5: "Refuse", 6: "Traffic", 7: "Listen", 99: "Other"},
	ClassHTTPActivity:    {0: "Unknown", 1: "Connect", 2: "Delete", 3: "Get", 4: "Head", 5: "Options", 6: "Post", 7: "Put", 8: "Trace", 99: "Other"},
}

var classNames = map[int]string{ClassNetworkActivity: "Network Activity", ClassHTTPActivity: "HTTP Activity"}

var httpMethodEnum = []string{"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT", "TRACE"}

// ---------------------------------------------------------------------------
// Validation.
// ---------------------------------------------------------------------------

func decode(t *testing.T, b []byte) map[string]any {
	t.Helper()
	if !json.Valid(b) {
		t.Fatalf("not valid JSON: %q", b)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("decoding: %v: %s", err, b)
	}
	if dec.More() {
		t.Fatalf("more than one JSON value: %q", b)
	}
	return m
}

func get(m map[string]any, path string) (any, bool) {
	var cur any = m
	for _, k := range strings.Split(path, ".") {
		o, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = o[k]; !ok {
			return nil, false
		}
	}
	return cur, true
}

func asInt(v any) (int64, bool) {
	n, ok := v.(json.Number)
	if !ok || strings.ContainsAny(n.String(), ".eE") {
		return 0, false
	}
	i, err := n.Int64()
	return i, err == nil
}

// validate checks a record against the OCSF 1.3.0 data above and returns
// its decoded form.
func validate(t *testing.T, b []byte) map[string]any {
	t.Helper()
	if bytes.ContainsAny(b, "\n\r") {
		t.Errorf("record spans lines: %q", b)
	}
	for _, c := range b {
		if c < 0x20 {
			t.Errorf("raw control byte %#x in output: %q", c, b)
			break
		}
	}
	if !utf8.Valid(b) {
		t.Errorf("output is not valid UTF-8: %q", b)
	}
	m := decode(t, b)

	class, ok := asInt(m["class_uid"])
	if !ok || classRequired[int(class)] == nil {
		t.Fatalf("class_uid %v is not 4001 or 4002", m["class_uid"])
	}
	for _, a := range classRequired[int(class)] {
		if _, ok := m[a]; !ok {
			t.Errorf("class %d: required attribute %s missing", class, a)
		}
	}
	for _, a := range knownOmissions[int(class)] {
		if _, ok := m[a]; ok {
			t.Errorf("class %d: %s present; update knownOmissions and docs/siem.md", class, a)
		}
	}
	for _, r := range objectRules {
		v, ok := get(m, r.path)
		if !ok {
			continue
		}
		o, ok := v.(map[string]any)
		if !ok {
			t.Errorf("%s is not an object: %v", r.path, v)
			continue
		}
		for _, a := range r.required {
			if _, ok := o[a]; !ok {
				t.Errorf("%s: required attribute %s missing", r.path, a)
			}
		}
		if r.atLeastOne != nil && !slices.ContainsFunc(r.atLeastOne, func(a string) bool { _, ok := o[a]; return ok }) {
			t.Errorf("%s: needs at least one of %v", r.path, r.atLeastOne)
		}
	}

	// Every attribute is an OCSF one, of its type.
	var walk func(prefix string, o map[string]any)
	walk = func(prefix string, o map[string]any) {
		for k, v := range o {
			p := k
			if prefix != "" {
				p = prefix + "." + k
			}
			typ, known := attrType[p]
			if !known {
				t.Errorf("%s is not an OCSF 1.3.0 attribute this package should emit", p)
				continue
			}
			switch typ {
			case "int":
				if _, ok := asInt(v); !ok {
					t.Errorf("%s = %v, want an integer", p, v)
				}
			case "string":
				if _, ok := v.(string); !ok {
					t.Errorf("%s = %v (%T), want a string", p, v, v)
				}
			case "[]string":
				l, ok := v.([]any)
				if !ok {
					t.Errorf("%s = %v, want an array", p, v)
				}
				for _, e := range l {
					if _, ok := e.(string); !ok {
						t.Errorf("%s has %v, want strings", p, e)
					}
				}
			case "object":
				o, ok := v.(map[string]any)
				if !ok {
					t.Errorf("%s = %v, want an object", p, v)
					continue
				}
				if p == "unmapped" {
					// Security Lake types unmapped as map<string,string>.
					for uk, uv := range o {
						if _, ok := uv.(string); !ok {
							t.Errorf("unmapped.%s = %v (%T), want a string", uk, uv, uv)
						}
					}
					continue
				}
				walk(p, o)
			}
		}
	}
	walk("", m)

	// Classification.
	if cat, _ := asInt(m["category_uid"]); cat != CategoryNetworkActivity {
		t.Errorf("category_uid = %v, want 4", m["category_uid"])
	}
	if m["category_name"] != "Network Activity" || m["class_name"] != classNames[int(class)] {
		t.Errorf("category_name %v, class_name %v", m["category_name"], m["class_name"])
	}
	act, _ := asInt(m["activity_id"])
	name, inEnum := activities[int(class)][act]
	if !inEnum {
		t.Errorf("activity_id %d is not in class %d's enum", act, class)
	}
	if m["activity_name"] != name {
		t.Errorf("activity_name %v, want %q for activity_id %d", m["activity_name"], name, act)
	}
	if tu, _ := asInt(m["type_uid"]); tu != class*100+act {
		t.Errorf("type_uid %d, want %d", tu, class*100+act)
	}
	if m["type_name"] != classNames[int(class)]+": "+name {
		t.Errorf("type_name %v", m["type_name"])
	}
	for p, values := range enums {
		v, ok := get(m, p)
		if !ok {
			continue
		}
		id, _ := asInt(v)
		caption, ok := values[id]
		if !ok {
			t.Errorf("%s = %d is not in the OCSF enum", p, id)
			continue
		}
		if cp, ok := captionOf[p]; ok {
			if c, _ := get(m, cp); c != caption {
				t.Errorf("%s = %v, want %q for %s %d", cp, c, caption, p, id)
			}
		}
	}
	if v, ok := get(m, "http_request.http_method"); ok && !slices.Contains(httpMethodEnum, v.(string)) {
		t.Errorf("http_request.http_method %q is not in the OCSF enum", v)
	}

	// Values.
	if tm, _ := asInt(m["time"]); tm < 1e12 || tm >= 1e13 {
		t.Errorf("time %d is not milliseconds since the epoch of a recent date", tm)
	}
	if v, _ := get(m, "metadata.version"); v != "1.3.0" {
		t.Errorf("metadata.version %v", v)
	}
	if v, _ := get(m, "metadata.log_name"); v != "imdsguard" {
		t.Errorf("metadata.log_name %v", v)
	}
	profiles, _ := get(m, "metadata.profiles")
	if l, _ := profiles.([]any); !slices.Contains(l, any("security_control")) {
		t.Errorf("metadata.profiles %v does not declare security_control (action_id, disposition_id)", profiles)
	}
	for _, p := range []string{"dst_endpoint", "src_endpoint"} {
		if v, ok := get(m, p+".ip"); ok {
			if _, err := netip.ParseAddr(v.(string)); err != nil {
				t.Errorf("%s.ip %q: %v", p, v, err)
			}
		}
		if v, ok := get(m, p+".port"); ok {
			if n, _ := asInt(v); n < 0 || n > 65535 {
				t.Errorf("%s.port %d out of range", p, n)
			}
		}
	}
	if v, ok := get(m, "actor.process.container.pod_uuid"); ok && !isUUID(v.(string)) {
		t.Errorf("pod_uuid %q is not a uuid_t", v)
	}
	return m
}

// ---------------------------------------------------------------------------
// Fixtures: the four golden scenarios.
// ---------------------------------------------------------------------------

var testProduct = Product{Name: "imdsguard", VendorName: "imdsguard", Version: "1.4.2", Hostname: "ip-10-0-3-17.ec2.internal", InstanceID: "i-0abc123def4567890"}

var (
	imds4 = netip.MustParseAddrPort("169.254.169.254:80")
	imds6 = netip.MustParseAddrPort("[fd00:ec2::254]:80")
)

func at(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t
}

// denyCredentialRead: an SSRF-style IMDSv1 credential read, refused.
func denyCredentialRead() *events.Event {
	return &events.Event{
		Time:             at("2026-11-23T11:02:11.200117320Z"),
		Kind:             bpf.KindRequest,
		Action:           bpf.ActionDeny,
		Reason:           bpf.ReasonIMDSv1NoToken,
		Endpoint:         imds4,
		Method:           "GET",
		Path:             "/latest/meta-data/iam/security-credentials/web",
		CredentialAccess: true,
		PID:              20211,
		PPID:             20190,
		Comm:             "java",
		UID:              1000,
		GID:              1000,
		Cgroup:           "/system.slice/app.service",
		CgroupID:         88,
		Exe:              "/usr/lib/jvm/java-21/bin/java",
		Cmdline:          "java -jar /srv/app.jar",
		Hostname:         "ip-10-0-3-17.ec2.internal",
		InstanceID:       "i-0abc123def4567890",
		Count:            1,
		NetnsCookie:      3,
		HostNetns:        true,
	}
}

// allowedTokenPut: the PUT that starts an IMDSv2 session, from a pod's
// container allowed by a rule.
func allowedTokenPut() *events.Event {
	return &events.Event{
		Time:        at("2026-11-23T11:05:00.5Z"),
		Kind:        bpf.KindRequest,
		Action:      bpf.ActionAllow,
		Endpoint:    imds4,
		Method:      "PUT",
		Path:        "/latest/api/token",
		PID:         4242,
		PPID:        4200,
		Comm:        "aws",
		UID:         0,
		GID:         0,
		Cgroup:      "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_5f60_7182_93a4_b5c6d7e8f901.slice/cri-containerd-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope",
		CgroupID:    4711,
		ContainerID: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
		Runtime:     "containerd",
		PodUID:      "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901",
		Pod:         "iam-broker-7d9f8",
		Namespace:   "security",
		Container:   "broker",
		Exe:         "/usr/local/bin/aws",
		Cmdline:     "aws sts get-caller-identity",
		Hostname:    "ip-10-0-3-17.ec2.internal",
		InstanceID:  "i-0abc123def4567890",
		Count:       1,
		NetnsCookie: 1<<63 + 7, // beyond float64: must stay exact
		HostNetns:   false,
		Rule:        "iam-broker",
	}
}

// refusedPodConnect: a pod reaching IMDS, refused at connect().
func refusedPodConnect() *events.Event {
	return &events.Event{
		Time:        at("2026-11-23T10:29:38.860217399Z"),
		Kind:        bpf.KindConnect,
		Action:      bpf.ActionDeny,
		Reason:      bpf.ReasonNonHostNetns,
		Endpoint:    imds4,
		PID:         11140,
		PPID:        11076,
		Comm:        "curl",
		UID:         0,
		GID:         0,
		Cgroup:      "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod9f8e7d6c_5b4a_3921_8f7e_6d5c4b3a2910.slice/cri-containerd-fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210.scope",
		CgroupID:    63,
		ContainerID: "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210",
		Runtime:     "containerd",
		PodUID:      "9f8e7d6c-5b4a-3921-8f7e-6d5c4b3a2910",
		Pod:         "web-5c7b9",
		Namespace:   "default",
		Container:   "web",
		Exe:         "/usr/bin/curl",
		Cmdline:     "curl -s http://169.254.169.254/latest/meta-data/",
		Hostname:    "ip-10-0-3-17.ec2.internal",
		Count:       3,
		NetnsCookie: 4101,
		HostNetns:   false,
	}
}

// packetDrop: a raw-socket packet from a pod, dropped by the nftables layer.
func packetDrop() *events.PacketEvent {
	return &events.PacketEvent{
		Time:        at("2026-11-23T12:00:01.25Z"),
		Action:      bpf.ActionDeny,
		Endpoint:    imds4,
		Src:         netip.MustParseAddrPort("10.0.3.7:40312"),
		InInterface: "veth1a2b",
	}
}

func TestGolden(t *testing.T) {
	for _, tc := range []struct {
		name   string
		render func() ([]byte, error)
	}{
		{"deny_credential_read", func() ([]byte, error) { return Render(denyCredentialRead(), testProduct) }},
		{"allowed_token_put", func() ([]byte, error) { return Render(allowedTokenPut(), testProduct) }},
		{"refused_pod_connect", func() ([]byte, error) { return Render(refusedPodConnect(), testProduct) }},
		{"nftables_packet_drop", func() ([]byte, error) { return Packet(packetDrop(), testProduct) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.render()
			if err != nil {
				t.Fatal(err)
			}
			validate(t, got)
			var pretty bytes.Buffer
			if err := json.Indent(&pretty, got, "", "  "); err != nil {
				t.Fatal(err)
			}
			pretty.WriteByte('\n')
			file := filepath.Join("testdata", tc.name+".json")
			if *update {
				if err := os.WriteFile(file, pretty.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(file)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(pretty.Bytes(), want) {
				t.Errorf("%s differs (go test -update rewrites it)\ngot:\n%s\nwant:\n%s", file, pretty.Bytes(), want)
			}
		})
	}
}

// The golden files pin the exact output; these pin the decisions in them,
// so that a -update cannot quietly change a mapping.
func TestGoldenDecisions(t *testing.T) {
	type want map[string]any
	check := func(t *testing.T, m map[string]any, w want) {
		t.Helper()
		for p, v := range w {
			got, ok := get(m, p)
			if !ok {
				if v != nil {
					t.Errorf("%s missing, want %v", p, v)
				}
				continue
			}
			if v == nil {
				t.Errorf("%s = %v, want it absent", p, got)
				continue
			}
			if n, ok := got.(json.Number); ok {
				got = n.String()
			}
			if fmt.Sprint(got) != fmt.Sprint(v) {
				t.Errorf("%s = %v, want %v", p, got, v)
			}
		}
	}
	render := func(t *testing.T) func([]byte, error) map[string]any {
		return func(b []byte, err error) map[string]any {
			t.Helper()
			if err != nil {
				t.Fatal(err)
			}
			return validate(t, b)
		}
	}

	t.Run("deny_credential_read", func(t *testing.T) {
		ev := denyCredentialRead()
		m := render(t)(Request(ev, testProduct))
		check(t, m, want{
			"class_uid": 4002, "activity_id": 3, "type_uid": 400203,
			"time":        ev.Time.UnixMilli(),
			"severity_id": 4, "action_id": 2, "disposition_id": 2, "status_id": 2,
			"status_code": "EACCES", "status_detail": "blocked: imdsv1_no_token",
			"http_request.http_method":         "GET",
			"http_request.url.path":            "/latest/meta-data/iam/security-credentials/web",
			"http_request.url.port":            80,
			"dst_endpoint.ip":                  "169.254.169.254",
			"dst_endpoint.port":                80,
			"actor.process.pid":                20211,
			"actor.process.name":               "java",
			"actor.process.cmd_line":           "java -jar /srv/app.jar",
			"actor.process.file.path":          "/usr/lib/jvm/java-21/bin/java",
			"actor.process.file.name":          "java",
			"actor.process.parent_process.pid": 20190,
			"actor.process.user.uid":           "1000",
			"actor.process.container":          nil,
			"device.hostname":                  "ip-10-0-3-17.ec2.internal",
			"device.instance_uid":              "i-0abc123def4567890",
			"unmapped.credential_access":       "true",
			"unmapped.has_token":               "false",
			"unmapped.reason":                  "imdsv1_no_token",
			"unmapped.action":                  "deny",
			"unmapped.cgroup":                  "/system.slice/app.service",
			"unmapped.host_netns":              "true",
			"http_response":                    nil,
			"src_endpoint":                     nil,
		})
	})
	t.Run("allowed_token_put", func(t *testing.T) {
		m := render(t)(Request(allowedTokenPut(), testProduct))
		check(t, m, want{
			"activity_id": 7, "type_uid": 400207, "severity_id": 1,
			"action_id": 1, "disposition_id": 1, "status_id": 1,
			"status_code": nil, "status_detail": nil,
			"http_request.http_method":         "PUT",
			"http_request.url.path":            "/latest/api/token",
			"actor.process.container.uid":      "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
			"actor.process.container.name":     "broker",
			"actor.process.container.runtime":  "containerd",
			"actor.process.container.pod_uuid": "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901",
			"actor.process.user.uid":           "0",
			"unmapped.pod_uid":                 "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901",
			"unmapped.pod":                     "iam-broker-7d9f8",
			"unmapped.namespace":               "security",
			"unmapped.rule":                    "iam-broker",
			"unmapped.netns_cookie":            "9223372036854775815",
			"unmapped.reason":                  nil,
		})
	})
	t.Run("refused_pod_connect", func(t *testing.T) {
		m := render(t)(Connect(refusedPodConnect(), testProduct))
		check(t, m, want{
			"class_uid": 4001, "activity_id": 5, "type_uid": 400105, "severity_id": 2,
			"action_id": 2, "disposition_id": 2, "status_id": 2,
			"status_code": "EPERM", "status_detail": "blocked: non_host_netns",
			"count":                           3,
			"metadata.event_code":             "connect",
			"http_request":                    nil,
			"connection_info.protocol_name":   nil,
			"connection_info.protocol_ver_id": 4,
			"unmapped.host_netns":             "false",
			"unmapped.credential_access":      "false",
			"unmapped.has_token":              nil,
			// the event has no instance id: the Product's fills in
			"device.instance_uid": "i-0abc123def4567890",
		})
	})
	t.Run("nftables_packet_drop", func(t *testing.T) {
		m := render(t)(Packet(packetDrop(), testProduct))
		check(t, m, want{
			"class_uid": 4001, "activity_id": 5, "type_uid": 400105, "severity_id": 2,
			"action_id": 2, "disposition_id": 2, "status_id": 2,
			"status_code": nil, "status_detail": "blocked: routed_from_other_netns",
			"metadata.event_code":           "packet",
			"src_endpoint.ip":               "10.0.3.7",
			"src_endpoint.port":             40312,
			"src_endpoint.interface_name":   "veth1a2b",
			"dst_endpoint.ip":               "169.254.169.254",
			"connection_info.protocol_name": "tcp",
			"connection_info.protocol_num":  6,
			"device.hostname":               "ip-10-0-3-17.ec2.internal",
			"actor":                         nil,
			"count":                         nil,
			"unmapped.reason":               "routed_from_other_netns",
		})
	})
}

// ---------------------------------------------------------------------------
// Every combination validates.
// ---------------------------------------------------------------------------

func TestConformanceMatrix(t *testing.T) {
	actions := []bpf.Action{bpf.ActionAllow, bpf.ActionDeny, bpf.ActionAudit, bpf.Action(7)}
	reasons := map[bpf.Action]bpf.Reason{bpf.ActionDeny: bpf.ReasonPolicyRule, bpf.ActionAudit: bpf.ReasonForwardedRequest}
	methods := []string{"GET", "PUT", "HEAD", "POST", "DELETE", "OPTIONS", "TRACE", "CONNECT", "PATCH", "get", ""}
	endpoints := []netip.AddrPort{imds4, imds6, netip.MustParseAddrPort("[::ffff:169.254.169.254]:80")}
	variants := map[string]func(*events.Event){
		"full": func(*events.Event) {},
		"bare": func(ev *events.Event) {
			*ev = events.Event{Time: ev.Time, Kind: ev.Kind, Action: ev.Action, Reason: ev.Reason, Endpoint: ev.Endpoint, Method: ev.Method, Path: ev.Path}
		},
		"packet context": func(ev *events.Event) { ev.PID, ev.PPID, ev.Comm, ev.Exe, ev.Cmdline = 0, 0, "", "", "" },
		"no host at all": func(ev *events.Event) { ev.Hostname, ev.InstanceID = "", "" },
		"container name": func(ev *events.Event) { ev.ContainerID = "" },
		"bad pod uid":    func(ev *events.Event) { ev.PodUID = "not-a-uuid" },
		"query":          func(ev *events.Event) { ev.Path = "/latest/meta-data/?a=b&c=%20" },
		"only a query":   func(ev *events.Event) { ev.Path = "?x" },
	}
	n := 0
	for _, a := range actions {
		for _, m := range methods {
			for _, ep := range endpoints {
				for vname, vary := range variants {
					for _, kind := range []bpf.Kind{bpf.KindRequest, bpf.KindConnect} {
						for _, cred := range []bool{false, true} {
							ev := allowedTokenPut()
							ev.Kind, ev.Action, ev.Reason, ev.Method, ev.Endpoint, ev.CredentialAccess = kind, a, reasons[a], m, ep, cred
							vary(ev)
							b, err := Render(ev, Product{})
							if err != nil {
								t.Fatalf("%s/%s/%s/%s: %v", a, m, ep, vname, err)
							}
							t.Run(fmt.Sprintf("%d", n), func(t *testing.T) { validate(t, b) })
							n++
						}
					}
				}
			}
		}
	}
	for _, a := range actions {
		for _, ep := range endpoints {
			for _, src := range []netip.AddrPort{{}, netip.MustParseAddrPort("10.1.2.3:1"), netip.MustParseAddrPort("[fd00::5]:443")} {
				for _, iface := range []string{"", "tap0"} {
					ev := &events.PacketEvent{Time: at("2026-01-01T00:00:00Z"), Action: a, Endpoint: ep, Src: src, InInterface: iface}
					for _, p := range []Product{{}, testProduct} {
						b, err := Packet(ev, p)
						if err != nil {
							t.Fatal(err)
						}
						t.Run(fmt.Sprintf("packet%d", n), func(t *testing.T) { validate(t, b) })
						n++
					}
				}
			}
		}
	}
}

// ---------------------------------------------------------------------------
// Mapping tables.
// ---------------------------------------------------------------------------

func TestHTTPActivityIDs(t *testing.T) {
	for _, tc := range []struct {
		method     string
		id         int64
		httpMethod any // nil: absent
		unmapped   any
	}{
		{"CONNECT", 1, "CONNECT", nil},
		{"DELETE", 2, "DELETE", nil},
		{"GET", 3, "GET", nil},
		{"HEAD", 4, "HEAD", nil},
		{"OPTIONS", 5, "OPTIONS", nil},
		{"POST", 6, "POST", nil},
		{"PUT", 7, "PUT", nil},
		{"TRACE", 8, "TRACE", nil},
		{"PATCH", 99, nil, "PATCH"},
		{"get", 99, nil, "get"}, // methods are case-sensitive
		{"", 0, nil, nil},       // e.g. unjudged_write: no method parsed
	} {
		ev := denyCredentialRead()
		ev.Method = tc.method
		b, err := Request(ev, testProduct)
		if err != nil {
			t.Fatal(err)
		}
		m := validate(t, b)
		if id, _ := asInt(m["activity_id"]); id != tc.id {
			t.Errorf("%q: activity_id %d, want %d", tc.method, id, tc.id)
		}
		if tu, _ := asInt(m["type_uid"]); tu != 400200+tc.id {
			t.Errorf("%q: type_uid %d", tc.method, tu)
		}
		got, _ := get(m, "http_request.http_method")
		if got != tc.httpMethod {
			t.Errorf("%q: http_method %v, want %v", tc.method, got, tc.httpMethod)
		}
		got, _ = get(m, "unmapped.method")
		if got != tc.unmapped {
			t.Errorf("%q: unmapped.method %v, want %v", tc.method, got, tc.unmapped)
		}
	}
}

func TestVerdictMapping(t *testing.T) {
	for _, tc := range []struct {
		action                             bpf.Action
		cred                               bool
		actionID, disposition, status, sev int64
		detail                             any
	}{
		{bpf.ActionAllow, false, 1, 1, 1, 1, nil},
		{bpf.ActionAllow, true, 1, 1, 1, 1, nil},
		{bpf.ActionAudit, false, 1, 1, 1, 3, "audit: would be blocked: imdsv1_no_token"},
		{bpf.ActionAudit, true, 1, 1, 1, 4, "audit: would be blocked: imdsv1_no_token"},
		{bpf.ActionDeny, false, 2, 2, 2, 2, "blocked: imdsv1_no_token"},
		{bpf.ActionDeny, true, 2, 2, 2, 4, "blocked: imdsv1_no_token"},
		{bpf.Action(9), true, 0, 0, 0, 0, nil},
	} {
		ev := denyCredentialRead()
		ev.Action, ev.CredentialAccess = tc.action, tc.cred
		b, err := Request(ev, testProduct)
		if err != nil {
			t.Fatal(err)
		}
		m := validate(t, b)
		for attr, want := range map[string]int64{"action_id": tc.actionID, "disposition_id": tc.disposition, "status_id": tc.status, "severity_id": tc.sev} {
			if got, _ := asInt(m[attr]); got != want {
				t.Errorf("%s cred=%v: %s = %d, want %d", tc.action, tc.cred, attr, got, want)
			}
		}
		if m["status_detail"] != tc.detail {
			t.Errorf("%s: status_detail %v, want %v", tc.action, m["status_detail"], tc.detail)
		}
		if got, _ := get(m, "unmapped.action"); got != tc.action.String() {
			t.Errorf("unmapped.action %v, want %s", got, tc.action)
		}
	}
}

func TestNetworkActivityIDs(t *testing.T) {
	for _, tc := range []struct {
		action bpf.Action
		conn   int64
		packet int64
	}{
		{bpf.ActionAllow, 1, 0}, // the table never reports an allowed packet
		{bpf.ActionAudit, 1, 6},
		{bpf.ActionDeny, 5, 5},
	} {
		ev := refusedPodConnect()
		ev.Action = tc.action
		b, err := Connect(ev, testProduct)
		if err != nil {
			t.Fatal(err)
		}
		if id, _ := asInt(validate(t, b)["activity_id"]); id != tc.conn {
			t.Errorf("connect %s: activity_id %d, want %d", tc.action, id, tc.conn)
		}
		pe := packetDrop()
		pe.Action = tc.action
		b, err = Packet(pe, testProduct)
		if err != nil {
			t.Fatal(err)
		}
		if id, _ := asInt(validate(t, b)["activity_id"]); id != tc.packet {
			t.Errorf("packet %s: activity_id %d, want %d", tc.action, id, tc.packet)
		}
	}
}

// An unjudged_write event comes from packet context: no process, no method
// or path, only the socket's owner and cgroup.
func TestUnjudgedWrite(t *testing.T) {
	ev := &events.Event{
		Time:     at("2026-11-23T11:00:00Z"),
		Kind:     bpf.KindRequest,
		Action:   bpf.ActionDeny,
		Reason:   bpf.ReasonUnjudgedWrite,
		Endpoint: imds4,
		UID:      1001,
		CgroupID: 99,
		Cgroup:   "/system.slice/app.service",
	}
	b, err := Render(ev, testProduct)
	if err != nil {
		t.Fatal(err)
	}
	m := validate(t, b)
	if v, _ := get(m, "actor.user.uid"); v != "1001" {
		t.Errorf("actor.user.uid %v", v)
	}
	if _, ok := get(m, "actor.process"); ok {
		t.Errorf("actor.process without a pid")
	}
	if v, ok := m["http_request"].(map[string]any); !ok || len(v) != 0 {
		t.Errorf("http_request %v, want {} (required, nothing known)", m["http_request"])
	}
	if id, _ := asInt(m["activity_id"]); id != 0 {
		t.Errorf("activity_id %d, want 0 Unknown", id)
	}
	if _, ok := m["status_code"]; ok {
		t.Errorf("status_code %v: the writer got no errno", m["status_code"])
	}
	if v := m["status_detail"]; v != "blocked: unjudged_write" {
		t.Errorf("status_detail %v", v)
	}
	if _, ok := get(m, "unmapped.gid"); ok {
		t.Errorf("unmapped.gid without a process")
	}
}

func TestQueryStringSplit(t *testing.T) {
	ev := denyCredentialRead()
	ev.Path = "/latest/meta-data/iam/info?x=1&y=%2F"
	b, err := Request(ev, testProduct)
	if err != nil {
		t.Fatal(err)
	}
	m := validate(t, b)
	if p, _ := get(m, "http_request.url.path"); p != "/latest/meta-data/iam/info" {
		t.Errorf("path %v", p)
	}
	if q, _ := get(m, "http_request.url.query_string"); q != "x=1&y=%2F" {
		t.Errorf("query_string %v", q)
	}
}

func TestUnmappedStringsAndNames(t *testing.T) {
	b, err := Request(allowedTokenPut(), testProduct)
	if err != nil {
		t.Fatal(err)
	}
	u := validate(t, b)["unmapped"].(map[string]any)
	keys := make([]string, 0, len(u))
	for k := range u {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	// Exactly the imdsguard field names, as documented in docs/siem.md.
	want := []string{"action", "cgroup", "cgroup_id", "credential_access", "gid", "has_token", "host_netns", "namespace", "netns_cookie", "pod", "pod_uid", "rule"}
	if !slices.Equal(keys, want) {
		t.Errorf("unmapped keys %v, want %v", keys, want)
	}
}

func TestProductDefaultsAndHost(t *testing.T) {
	pe := packetDrop()
	b, err := Packet(pe, Product{})
	if err != nil {
		t.Fatal(err)
	}
	m := validate(t, b)
	if v, _ := get(m, "metadata.product.name"); v != "imdsguard" {
		t.Errorf("product.name %v", v)
	}
	if v, _ := get(m, "metadata.product.vendor_name"); v != "imdsguard" {
		t.Errorf("product.vendor_name %v", v)
	}
	if _, ok := get(m, "metadata.product.version"); ok {
		t.Errorf("product.version set without a version")
	}
	if _, ok := m["device"]; ok {
		t.Errorf("device without a hostname or instance id: %v", m["device"])
	}

	ev := denyCredentialRead()
	ev.Hostname = "node-a"
	b, err = Request(ev, Product{Hostname: "node-b", VendorName: "Example Corp", Name: "imdsguard", Version: "9"})
	if err != nil {
		t.Fatal(err)
	}
	m = validate(t, b)
	if v, _ := get(m, "device.hostname"); v != "node-a" {
		t.Errorf("device.hostname %v: the event's own name must win", v)
	}
	if v, _ := get(m, "metadata.product.vendor_name"); v != "Example Corp" {
		t.Errorf("vendor_name %v", v)
	}
}

func TestErrors(t *testing.T) {
	if _, err := Render(nil, testProduct); err == nil {
		t.Error("Render(nil) succeeded")
	}
	ev := denyCredentialRead()
	ev.Kind = bpf.Kind(5)
	if _, err := Render(ev, testProduct); err == nil {
		t.Error("unknown kind rendered")
	}
	if _, err := Connect(denyCredentialRead(), testProduct); err == nil {
		t.Error("Connect accepted a request event")
	}
	if _, err := Request(refusedPodConnect(), testProduct); err == nil {
		t.Error("Request accepted a connect event")
	}
	ev = denyCredentialRead()
	ev.Endpoint = netip.AddrPort{}
	if _, err := Request(ev, testProduct); err == nil {
		t.Error("event without an endpoint rendered")
	}
	ev = denyCredentialRead()
	ev.Time = time.Time{}
	if _, err := Request(ev, testProduct); err == nil {
		t.Error("event without a time rendered")
	}
	if _, err := Packet(nil, testProduct); err == nil {
		t.Error("Packet(nil) succeeded")
	}
	if _, err := Packet(&events.PacketEvent{Time: time.Now()}, testProduct); err == nil {
		t.Error("packet without an endpoint rendered")
	}
}

func TestTimeIsMilliseconds(t *testing.T) {
	ev := refusedPodConnect()
	ev.Time = time.Date(2026, 11, 23, 10, 29, 38, 860_999_999, time.FixedZone("CET", 3600))
	b, err := Connect(ev, testProduct)
	if err != nil {
		t.Fatal(err)
	}
	// Truncated, not rounded, and independent of the zone.
	want := time.Date(2026, 11, 23, 9, 29, 38, 860_000_000, time.UTC).Unix()*1000 + 860
	if tm, _ := asInt(validate(t, b)["time"]); tm != want {
		t.Errorf("time %d, want %d", tm, want)
	}
}

// ---------------------------------------------------------------------------
// Hostile input: whatever the workload chose comes out as valid JSON that
// decodes to the same value (invalid UTF-8 becomes U+FFFD), on one line,
// and cannot add or change an attribute.
// ---------------------------------------------------------------------------

func TestHostileInput(t *testing.T) {
	const (
		comm    = "a\"\n{"
		badUTF8 = "\xff\xfe\xc3\x28"
	)
	hostile := []string{
		comm,
		comm + badUTF8,
		`"},"severity_id":0,"x":{"`,
		"\x00\x01\x1b[31m\r\n\t\x7f",
		"\u2028\u2029<script>&amp;</script>",
		"\\\"\\u0000",
		"\u202e}\"{",
	}
	for i, s := range hostile {
		ev := allowedTokenPut()
		ev.Comm, ev.Path, ev.Cmdline, ev.Exe = s, "/latest/"+s+"?q="+s, s, "/bin/"+s
		ev.Cgroup, ev.Pod, ev.Namespace, ev.Container, ev.Rule = s, s, s, s, s
		ev.Method = s
		ev.Hostname = s
		b, err := Request(ev, testProduct)
		if err != nil {
			t.Fatal(err)
		}
		m := validate(t, b)
		want := jsonString(t, s) // s, with each invalid byte U+FFFD
		for _, p := range []string{
			"actor.process.name", "actor.process.cmd_line", "actor.process.container.name",
			"unmapped.cgroup", "unmapped.pod", "unmapped.namespace", "unmapped.rule", "unmapped.method", "device.hostname",
		} {
			if got, _ := get(m, p); got != want {
				t.Errorf("%d: %s = %q, want %q", i, p, got, want)
			}
		}
		if got, _ := get(m, "actor.process.file.path"); got != "/bin/"+want {
			t.Errorf("%d: file.path %q", i, got)
		}
		if got, _ := get(m, "http_request.url.path"); got != "/latest/"+want {
			t.Errorf("%d: url.path %q, want %q", i, got, "/latest/"+want)
		}
		if got, _ := get(m, "http_request.url.query_string"); got != "q="+want {
			t.Errorf("%d: url.query_string %q, want %q", i, got, "q="+want)
		}
		if sev, _ := asInt(m["severity_id"]); sev != 1 {
			t.Errorf("%d: severity_id %d: hostile input changed an attribute", i, sev)
		}
		if _, ok := m["x"]; ok {
			t.Errorf("%d: hostile input added an attribute", i)
		}
		if bytes.Contains(b, []byte("\u2028")) || bytes.Contains(b, []byte("\u2029")) {
			t.Errorf("%d: raw U+2028/U+2029 in output", i)
		}
	}

	// The brief's case, explicitly: comm a"\n{ plus invalid UTF-8.
	ev := refusedPodConnect()
	ev.Comm = comm + badUTF8
	b, err := Connect(ev, testProduct)
	if err != nil {
		t.Fatal(err)
	}
	m := validate(t, b)
	if got, _ := get(m, "actor.process.name"); got != "a\"\n{\uFFFD\uFFFD\uFFFD(" {
		t.Errorf("comm decoded to %q", got)
	}
	if !bytes.Contains(b, []byte(`"name":"a\"\n{\ufffd\ufffd\ufffd("`)) {
		t.Errorf("comm not escaped as expected: %s", b)
	}
}

// jsonString is what s decodes to after a trip through encoding/json.
func jsonString(t *testing.T, s string) string {
	t.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var out string
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if utf8.ValidString(s) && out != s {
		t.Fatalf("valid UTF-8 %q did not round-trip: %q", s, out)
	}
	return out
}

func TestManyValuesRoundTrip(t *testing.T) {
	// Every byte value in comm and cmdline.
	var all strings.Builder
	for c := 1; c < 256; c++ {
		all.WriteByte(byte(c))
	}
	ev := denyCredentialRead()
	ev.Comm, ev.Cmdline = all.String(), all.String()
	b, err := Request(ev, testProduct)
	if err != nil {
		t.Fatal(err)
	}
	m := validate(t, b)
	want := jsonString(t, all.String())
	if got, _ := get(m, "actor.process.cmd_line"); got != want {
		t.Errorf("cmd_line %q, want %q", got, want)
	}
	// The ASCII part survives exactly.
	got, _ := get(m, "actor.process.name")
	if !strings.HasPrefix(got.(string), all.String()[:127]) {
		t.Errorf("ASCII bytes changed: %q", got)
	}
}
