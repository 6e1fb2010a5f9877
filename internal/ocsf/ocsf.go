// Package ocsf renders imdsguard events as OCSF (Open Cybersecurity Schema
// Framework) 1.3.0 JSON, for Amazon Security Lake (which stores OCSF records
// as Parquet; the records convert as they are) and other OCSF consumers.
//
//	kind "request"         HTTP Activity     class_uid 4002
//	kind "connect"         Network Activity  class_uid 4001
//	packet (nftables drop) Network Activity  class_uid 4001
//
// All three are in category 4, Network Activity. The field-by-field mapping
// is in docs/siem.md; in short:
//
//   - time is milliseconds since the epoch; type_uid is class_uid*100 +
//     activity_id; metadata.version is "1.3.0", metadata.log_name
//     "imdsguard", metadata.event_code the imdsguard kind.
//   - The verdict uses the security_control profile: allow and audit are
//     action_id 1 Allowed, disposition_id 1 Allowed, status_id 1 Success;
//     deny is action_id 2 Denied, disposition_id 2 Blocked, status_id 2
//     Failure. An audit verdict says "audit: would be blocked: REASON" in
//     status_detail and "audit" in unmapped.action.
//   - severity_id: 1 Informational for allow, 3 Medium for audit, 2 Low for
//     deny, and 4 High for audit or deny of a credential request.
//   - What OCSF 1.3.0 has no attribute for (cgroup, netns_cookie, rule,
//     reason, credential_access, has_token, …) goes into unmapped, every
//     value a string, under the name the imdsguard JSON uses.
//
// One deviation from 1.3.0, on purpose: HTTP Activity requires
// http_response there, but imdsguard judges requests and never sees a
// response (a refused request gets none at all), so none is invented.
// OCSF 1.4.0 made http_response optional for exactly this case
// (ocsf-schema issue 1273).
//
// Every value, including what the workload chose (comm, path, cmdline,
// exe), is written by encoding/json: quotes, backslashes and control
// characters are escaped, U+2028/U+2029 and <, >, & become \u escapes, and
// invalid UTF-8 becomes U+FFFD. The output is one JSON object without a
// trailing newline.
package ocsf

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/imdsguard/imdsguard/bpf"
	"github.com/imdsguard/imdsguard/internal/events"
)

// SchemaVersion is the OCSF version the output follows (metadata.version).
const SchemaVersion = "1.3.0"

// LogName is metadata.log_name.
const LogName = "imdsguard"

// OCSF category and class ids.
const (
	CategoryNetworkActivity = 4
	ClassNetworkActivity    = 4001
	ClassHTTPActivity       = 4002
)

// Product describes the reporting product, and the node it runs on, for
// every rendered event. The caller fills it in once.
type Product struct {
	Name       string // metadata.product.name; "imdsguard" when empty
	VendorName string // metadata.product.vendor_name (required by OCSF); "imdsguard" when empty
	Version    string // metadata.product.version: the daemon's version
	// Hostname and InstanceID describe the node (device.hostname,
	// device.instance_uid) for events that do not carry their own: packet
	// events. An Event's own Hostname and InstanceID take precedence.
	Hostname   string
	InstanceID string
}

// Render renders an Event by its kind: Request for "request", Connect for
// "connect".
func Render(ev *events.Event, p Product) ([]byte, error) {
	if ev == nil {
		return nil, errors.New("ocsf: nil event")
	}
	switch ev.Kind {
	case bpf.KindRequest:
		return Request(ev, p)
	case bpf.KindConnect:
		return Connect(ev, p)
	}
	return nil, fmt.Errorf("ocsf: event kind %d has no OCSF class", ev.Kind)
}

// Request renders a "request" event (one judged HTTP request) as HTTP
// Activity (4002). activity_id follows the method.
func Request(ev *events.Event, p Product) ([]byte, error) {
	if err := check(ev, bpf.KindRequest); err != nil {
		return nil, err
	}
	act, name := httpActivity(ev.Method)
	r := base(ClassHTTPActivity, "HTTP Activity", act, name, ev.Time, p)
	r.fromEvent(ev, p)
	r.ConnectionInfo = connInfo(ev.Endpoint.Addr(), true)

	req := &httpRequest{}
	if act != activityUnknown && act != activityOther {
		req.HTTPMethod = ev.Method
	} else if ev.Method != "" {
		r.Unmapped["method"] = ev.Method
	}
	if ev.Path != "" {
		u := &url{Scheme: "http", Port: int(ev.Endpoint.Port()), Path: ev.Path}
		if i := strings.IndexByte(ev.Path, '?'); i > 0 {
			u.Path, u.QueryString = ev.Path[:i], ev.Path[i+1:]
		}
		req.URL = u
	}
	r.HTTPRequest = req
	r.Unmapped["has_token"] = strconv.FormatBool(ev.HasToken)

	v := verdictOf(ev.Action, ev.CredentialAccess)
	subject := "IMDS request"
	if ev.CredentialAccess {
		subject = "IMDS credential request"
	}
	r.setVerdict(v, subject, ev.Reason.String())
	// segments dropped in packet context fail no write of their own
	if ev.Action == bpf.ActionDeny && ev.Reason != bpf.ReasonUnjudgedWrite && ev.Reason != bpf.ReasonUrgentData {
		r.StatusCode = "EACCES" // what the writer's write()/send() returned
	}
	return marshal(r)
}

// Connect renders a "connect" event (one IMDS connection attempt) as
// Network Activity (4001): activity Open when the connection went ahead
// (allow, audit), Refuse when it was refused.
func Connect(ev *events.Event, p Product) ([]byte, error) {
	if err := check(ev, bpf.KindConnect); err != nil {
		return nil, err
	}
	act := activityUnknown
	switch ev.Action {
	case bpf.ActionAllow, bpf.ActionAudit:
		act = netOpen
	case bpf.ActionDeny:
		act = netRefuse
	}
	r := base(ClassNetworkActivity, "Network Activity", act, netActivityNames[act], ev.Time, p)
	r.fromEvent(ev, p)
	// A connect hook also sees UDP sockets and the event does not say
	// which, so no protocol is claimed.
	r.ConnectionInfo = connInfo(ev.Endpoint.Addr(), false)
	r.setVerdict(verdictOf(ev.Action, ev.CredentialAccess), "IMDS connection", ev.Reason.String())
	if ev.Action == bpf.ActionDeny {
		r.StatusCode = "EPERM" // what connect() returned
	}
	return marshal(r)
}

// Packet renders a packet the nftables layer stopped (or, in audit mode,
// let through) as Network Activity (4001): activity Refuse when it was
// stopped, Traffic when audit mode let it pass.
func Packet(ev *events.PacketEvent, p Product) ([]byte, error) {
	if ev == nil {
		return nil, errors.New("ocsf: nil packet event")
	}
	if !ev.Endpoint.IsValid() {
		return nil, errors.New("ocsf: packet event has no endpoint")
	}
	if ev.Time.IsZero() {
		return nil, errors.New("ocsf: packet event has no time")
	}
	act := activityUnknown
	switch ev.Action {
	case bpf.ActionDeny:
		act = netRefuse
	case bpf.ActionAudit:
		act = netTraffic
	}
	r := base(ClassNetworkActivity, "Network Activity", act, netActivityNames[act], ev.Time, p)
	r.Metadata.EventCode = "packet"
	r.Device = deviceOf("", "", p)
	r.DstEndpoint = endpointOf(ev.Endpoint, "")
	if ev.Src.IsValid() || ev.InInterface != "" {
		r.SrcEndpoint = endpointOf(ev.Src, ev.InInterface)
	}
	// The table matches TCP only.
	r.ConnectionInfo = connInfo(ev.Endpoint.Addr(), true)
	const reason = "routed_from_other_netns"
	r.Unmapped = map[string]string{
		"action":     ev.Action.String(),
		"reason":     reason,
		"host_netns": "false",
	}
	v := verdictOf(ev.Action, false)
	r.setVerdict(v, "", reason)
	switch ev.Action {
	case bpf.ActionDeny:
		r.Message = "Packet routed to IMDS from another network namespace stopped by the nftables layer (" + reason + ")"
	case bpf.ActionAudit:
		r.Message = "Packet routed to IMDS from another network namespace let through in audit mode; enforce mode would stop it (" + reason + ")"
	default:
		r.Message = "Packet routed to IMDS from another network namespace, verdict " + ev.Action.String()
	}
	return marshal(r)
}

// Activity ids.
const (
	activityUnknown = 0
	activityOther   = 99

	netOpen    = 1
	netRefuse  = 5
	netTraffic = 6
)

var netActivityNames = map[int]string{
	activityUnknown: "Unknown",
	netOpen:         "Open",
	netRefuse:       "Refuse",
	netTraffic:      "Traffic",
	activityOther:   "Other",
}

// httpMethods are the HTTP Activity activity ids of OCSF 1.3.0 by method
// (also the values http_request.http_method may take). Methods are
// case-sensitive (RFC 9110), so "get" is Other.
var httpMethods = map[string]struct {
	id   int
	name string
}{
	"CONNECT": {1, "Connect"},
	"DELETE":  {2, "Delete"},
	"GET":     {3, "Get"},
	"HEAD":    {4, "Head"},
	"OPTIONS": {5, "Options"},
	"POST":    {6, "Post"},
	"PUT":     {7, "Put"},
	"TRACE":   {8, "Trace"},
}

func httpActivity(method string) (int, string) {
	if method == "" {
		return activityUnknown, "Unknown"
	}
	if m, ok := httpMethods[method]; ok {
		return m.id, m.name
	}
	return activityOther, "Other"
}

func check(ev *events.Event, kind bpf.Kind) error {
	if ev == nil {
		return errors.New("ocsf: nil event")
	}
	if ev.Kind != kind {
		return fmt.Errorf("ocsf: event kind %q, want %q", ev.Kind, kind)
	}
	if !ev.Endpoint.IsValid() {
		return errors.New("ocsf: event has no endpoint")
	}
	if ev.Time.IsZero() {
		return errors.New("ocsf: event has no time")
	}
	return nil
}

// record is one OCSF event. Attributes that OCSF requires, and the ids
// (whose 0 means Unknown), are never omitted.
type record struct {
	ActivityID     int               `json:"activity_id"`
	ActivityName   string            `json:"activity_name"`
	CategoryUID    int               `json:"category_uid"`
	CategoryName   string            `json:"category_name"`
	ClassUID       int               `json:"class_uid"`
	ClassName      string            `json:"class_name"`
	TypeUID        int               `json:"type_uid"`
	TypeName       string            `json:"type_name"`
	Time           int64             `json:"time"`
	SeverityID     int               `json:"severity_id"`
	Severity       string            `json:"severity"`
	ActionID       int               `json:"action_id"`
	Action         string            `json:"action"`
	DispositionID  int               `json:"disposition_id"`
	Disposition    string            `json:"disposition"`
	StatusID       int               `json:"status_id"`
	Status         string            `json:"status"`
	StatusCode     string            `json:"status_code,omitempty"`
	StatusDetail   string            `json:"status_detail,omitempty"`
	Count          uint64            `json:"count,omitempty"`
	Message        string            `json:"message"`
	Metadata       metadata          `json:"metadata"`
	Device         *device           `json:"device,omitempty"`
	Actor          *actor            `json:"actor,omitempty"`
	SrcEndpoint    *endpoint         `json:"src_endpoint,omitempty"`
	DstEndpoint    *endpoint         `json:"dst_endpoint"`
	ConnectionInfo *connectionInfo   `json:"connection_info,omitempty"`
	HTTPRequest    *httpRequest      `json:"http_request,omitempty"`
	Unmapped       map[string]string `json:"unmapped,omitempty"`
}

type metadata struct {
	Product   product  `json:"product"`
	Version   string   `json:"version"`
	LogName   string   `json:"log_name"`
	EventCode string   `json:"event_code,omitempty"`
	Profiles  []string `json:"profiles"`
}

type product struct {
	Name       string `json:"name"`
	VendorName string `json:"vendor_name"`
	Version    string `json:"version,omitempty"`
}

type device struct {
	Hostname    string `json:"hostname,omitempty"`
	InstanceUID string `json:"instance_uid,omitempty"`
	TypeID      int    `json:"type_id"`
	Type        string `json:"type"`
}

type actor struct {
	Process *process `json:"process,omitempty"`
	User    *user    `json:"user,omitempty"`
}

type process struct {
	PID           int        `json:"pid"`
	Name          string     `json:"name,omitempty"`
	CmdLine       string     `json:"cmd_line,omitempty"`
	File          *file      `json:"file,omitempty"`
	ParentProcess *parent    `json:"parent_process,omitempty"`
	User          user       `json:"user"`
	Container     *container `json:"container,omitempty"`
}

type parent struct {
	PID int `json:"pid"`
}

type user struct {
	UID string `json:"uid"` // string_t in OCSF
}

type file struct {
	Name   string `json:"name"`
	Path   string `json:"path"`
	TypeID int    `json:"type_id"`
	Type   string `json:"type"`
}

type container struct {
	UID     string `json:"uid,omitempty"`
	Name    string `json:"name,omitempty"`
	Image   *image `json:"image,omitempty"`
	Runtime string `json:"runtime,omitempty"`
	PodUUID string `json:"pod_uuid,omitempty"`
}

// image is OCSF's Image object: a reference split into its name and its
// tag, or its digest (uid).
type image struct {
	Name string `json:"name"`
	Tag  string `json:"tag,omitempty"`
	UID  string `json:"uid,omitempty"`
}

func imageOf(ref string) *image {
	if ref == "" {
		return nil
	}
	if name, digest, ok := strings.Cut(ref, "@"); ok {
		return &image{Name: name, UID: digest}
	}
	slash := strings.LastIndexByte(ref, '/')
	if colon := strings.LastIndexByte(ref, ':'); colon > slash {
		return &image{Name: ref[:colon], Tag: ref[colon+1:]}
	}
	return &image{Name: ref}
}

type endpoint struct {
	IP            string `json:"ip,omitempty"`
	Port          int    `json:"port,omitempty"`
	InterfaceName string `json:"interface_name,omitempty"`
}

type connectionInfo struct {
	DirectionID   int    `json:"direction_id"`
	Direction     string `json:"direction"`
	ProtocolVerID int    `json:"protocol_ver_id"`
	ProtocolName  string `json:"protocol_name,omitempty"`
	ProtocolNum   int    `json:"protocol_num,omitempty"`
}

type httpRequest struct {
	HTTPMethod string `json:"http_method,omitempty"`
	URL        *url   `json:"url,omitempty"`
}

type url struct {
	Scheme      string `json:"scheme"`
	Port        int    `json:"port"`
	Path        string `json:"path"`
	QueryString string `json:"query_string,omitempty"`
}

// profiles are the OCSF profiles the records use: host (device, actor),
// security_control (action_id, disposition_id) and container
// (actor.process.container).
var profiles = []string{"host", "security_control", "container"}

func base(class int, className string, act int, actName string, t time.Time, p Product) *record {
	name, vendor := p.Name, p.VendorName
	if name == "" {
		name = "imdsguard"
	}
	if vendor == "" {
		vendor = "imdsguard"
	}
	return &record{
		ActivityID:   act,
		ActivityName: actName,
		CategoryUID:  CategoryNetworkActivity,
		CategoryName: "Network Activity",
		ClassUID:     class,
		ClassName:    className,
		TypeUID:      class*100 + act,
		TypeName:     className + ": " + actName,
		Time:         t.UnixMilli(),
		Metadata: metadata{
			Product:  product{Name: name, VendorName: vendor, Version: p.Version},
			Version:  SchemaVersion,
			LogName:  LogName,
			Profiles: profiles,
		},
	}
}

// fromEvent fills what request and connect events have in common.
func (r *record) fromEvent(ev *events.Event, p Product) {
	r.Metadata.EventCode = ev.Kind.String()
	r.Count = max(ev.Count, 1)
	r.Device = deviceOf(ev.Hostname, ev.InstanceID, p)
	r.DstEndpoint = endpointOf(ev.Endpoint, "")
	// pid 0 is no process (an event whose socket has no recorded owner):
	// the actor is the user alone.
	if ev.PID == 0 {
		r.Actor = &actor{User: &user{UID: strconv.FormatUint(uint64(ev.UID), 10)}}
	} else {
		pr := process{
			PID:     int(ev.PID),
			Name:    ev.Comm,
			CmdLine: ev.Cmdline,
			User:    user{UID: strconv.FormatUint(uint64(ev.UID), 10)},
		}
		if ev.Exe != "" {
			pr.File = &file{Name: path.Base(ev.Exe), Path: ev.Exe, TypeID: 1, Type: "Regular File"}
		}
		if ev.PPID != 0 {
			pr.ParentProcess = &parent{PID: int(ev.PPID)}
		}
		if ev.ContainerID != "" || ev.Container != "" {
			c := &container{UID: ev.ContainerID, Name: ev.Container, Image: imageOf(ev.Image), Runtime: ev.Runtime}
			if isUUID(ev.PodUID) {
				c.PodUUID = ev.PodUID
			}
			pr.Container = c
		}
		r.Actor = &actor{Process: &pr}
	}

	u := map[string]string{
		"action":            ev.Action.String(),
		"credential_access": strconv.FormatBool(ev.CredentialAccess),
		"netns_cookie":      strconv.FormatUint(ev.NetnsCookie, 10),
		"host_netns":        strconv.FormatBool(ev.HostNetns),
	}
	if ev.PID != 0 {
		u["gid"] = strconv.FormatUint(uint64(ev.GID), 10)
	}
	if ev.CgroupID != 0 {
		u["cgroup_id"] = strconv.FormatUint(ev.CgroupID, 10)
	}
	for k, v := range map[string]string{
		"reason":    ev.Reason.String(),
		"cgroup":    ev.Cgroup,
		"pod_uid":   ev.PodUID,
		"pod":       ev.Pod,
		"namespace": ev.Namespace,
		"rule":      ev.Rule,
	} {
		if v != "" {
			u[k] = v
		}
	}
	r.Unmapped = u
}

type verdict struct {
	actionID, dispositionID, statusID, severityID int
	action, disposition, status, severity         string
	audit, deny                                   bool
}

// verdictOf maps an imdsguard action to the security_control and status
// attributes, and chooses the severity.
func verdictOf(a bpf.Action, credential bool) verdict {
	var v verdict
	switch a {
	case bpf.ActionAllow:
		v = verdict{actionID: 1, dispositionID: 1, statusID: 1, severityID: 1}
	case bpf.ActionAudit:
		v = verdict{actionID: 1, dispositionID: 1, statusID: 1, severityID: 3, audit: true}
	case bpf.ActionDeny:
		v = verdict{actionID: 2, dispositionID: 2, statusID: 2, severityID: 2, deny: true}
	default: // all Unknown (0)
	}
	if credential && (v.audit || v.deny) {
		v.severityID = 4
	}
	v.action = actionNames[v.actionID]
	v.disposition = dispositionNames[v.dispositionID]
	v.status = statusNames[v.statusID]
	v.severity = severityNames[v.severityID]
	return v
}

var (
	actionNames      = map[int]string{0: "Unknown", 1: "Allowed", 2: "Denied"}
	dispositionNames = map[int]string{0: "Unknown", 1: "Allowed", 2: "Blocked"}
	statusNames      = map[int]string{0: "Unknown", 1: "Success", 2: "Failure"}
	severityNames    = map[int]string{0: "Unknown", 1: "Informational", 2: "Low", 3: "Medium", 4: "High"}
)

// setVerdict sets the verdict attributes, status_detail and, when subject
// is not empty, the message. reason is an imdsguard reason name: a fixed
// identifier, never workload data, so the message holds none.
func (r *record) setVerdict(v verdict, subject, reason string) {
	r.ActionID, r.Action = v.actionID, v.action
	r.DispositionID, r.Disposition = v.dispositionID, v.disposition
	r.StatusID, r.Status = v.statusID, v.status
	r.SeverityID, r.Severity = v.severityID, v.severity
	why := ""
	if reason != "" {
		why = ": " + reason
	}
	switch {
	case v.deny:
		r.StatusDetail = "blocked" + why
	case v.audit:
		r.StatusDetail = "audit: would be blocked" + why
	}
	if subject == "" {
		return
	}
	switch {
	case v.deny:
		r.Message = subject + " blocked" + paren(reason)
	case v.audit:
		r.Message = subject + " allowed in audit mode; enforce mode would block it" + paren(reason)
	case v.actionID == 1:
		r.Message = subject + " allowed"
	default:
		r.Message = subject + ", verdict unknown"
	}
}

func paren(s string) string {
	if s == "" {
		return ""
	}
	return " (" + s + ")"
}

// deviceOf describes the node: an EC2 instance, so OCSF's Server (type 1);
// whether virtual or bare metal imdsguard does not know. nil when there is
// nothing to name it by (an OCSF device needs a hostname or an id).
func deviceOf(hostname, instanceID string, p Product) *device {
	if hostname == "" {
		hostname = p.Hostname
	}
	if instanceID == "" {
		instanceID = p.InstanceID
	}
	if hostname == "" && instanceID == "" {
		return nil
	}
	return &device{Hostname: hostname, InstanceUID: instanceID, TypeID: 1, Type: "Server"}
}

func endpointOf(ap netip.AddrPort, iface string) *endpoint {
	e := &endpoint{InterfaceName: iface}
	if ap.IsValid() {
		e.IP = ap.Addr().Unmap().String()
		e.Port = int(ap.Port())
	}
	return e
}

// connInfo: every connection imdsguard reports goes out to IMDS (direction
// Outbound, seen from the workload). tcp says whether the protocol is known
// to be TCP.
func connInfo(dst netip.Addr, tcp bool) *connectionInfo {
	c := &connectionInfo{DirectionID: 2, Direction: "Outbound"}
	switch {
	case dst.Unmap().Is4():
		c.ProtocolVerID = 4
	case dst.Is6():
		c.ProtocolVerID = 6
	}
	if tcp {
		c.ProtocolName, c.ProtocolNum = "tcp", 6
	}
	return c
}

// isUUID reports whether s has the canonical 8-4-4-4-12 hex form OCSF's
// uuid_t asks for (containerid only produces that form; checked anyway).
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := range len(s) {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return false
			}
		}
	}
	return true
}

func marshal(r *record) ([]byte, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("ocsf: %w", err)
	}
	return b, nil
}
