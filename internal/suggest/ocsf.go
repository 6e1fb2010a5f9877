package suggest

import (
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"time"
)

// ocsfEvent is what suggest reads back from an event internal/ocsf
// rendered (docs/siem.md): the fields OCSF has an attribute for, and the
// rest from "unmapped", where the renderer keeps them under their
// imdsguard JSON names.
type ocsfEvent struct {
	Time     int64  `json:"time"` // milliseconds since the epoch
	Count    uint64 `json:"count"`
	Metadata struct {
		LogName   string `json:"log_name"`
		EventCode string `json:"event_code"`
	} `json:"metadata"`
	Actor *struct {
		Process *struct {
			Name string `json:"name"`
			File *struct {
				Path string `json:"path"`
			} `json:"file"`
			User      ocsfUser `json:"user"`
			Container *struct {
				UID  string `json:"uid"`
				Name string `json:"name"`
			} `json:"container"`
		} `json:"process"`
		User *ocsfUser `json:"user"`
	} `json:"actor"`
	SrcEndpoint *struct {
		IP   string `json:"ip"`
		Port int    `json:"port"`
	} `json:"src_endpoint"`
	HTTPRequest *struct {
		HTTPMethod string `json:"http_method"`
		URL        *struct {
			Path        string `json:"path"`
			QueryString string `json:"query_string"`
		} `json:"url"`
	} `json:"http_request"`
	Unmapped map[string]string `json:"unmapped"`
}

type ocsfUser struct {
	UID string `json:"uid"`
}

func decodeOCSF(line []byte) (record, error) {
	var e ocsfEvent
	if err := json.Unmarshal(line, &e); err != nil {
		return record{}, fmt.Errorf("not an imdsguard OCSF event: %w", err)
	}
	if e.Metadata.LogName != "imdsguard" {
		return record{}, fmt.Errorf("an OCSF event from %q, not from imdsguard (metadata.log_name)", e.Metadata.LogName)
	}
	u := e.Unmapped
	rec := record{
		Time:      time.UnixMilli(e.Time).UTC(),
		Kind:      e.Metadata.EventCode,
		Action:    u["action"],
		Reason:    u["reason"],
		Method:    u["method"],
		Cgroup:    u["cgroup"],
		PodUID:    u["pod_uid"],
		Pod:       u["pod"],
		Namespace: u["namespace"],
		Rule:      u["rule"],
		Count:     e.Count,
	}
	if err := e.fillActor(&rec); err != nil {
		return record{}, err
	}
	if r := e.HTTPRequest; r != nil {
		if r.HTTPMethod != "" {
			rec.Method = r.HTTPMethod
		}
		if r.URL != nil {
			rec.Path = r.URL.Path
			if r.URL.QueryString != "" {
				rec.Path += "?" + r.URL.QueryString
			}
		}
	}
	if s := e.SrcEndpoint; s != nil && s.IP != "" {
		rec.Src = net.JoinHostPort(s.IP, strconv.Itoa(s.Port))
	}
	return rec, checkAction(rec)
}

// fillActor takes the process (comm, exe, uid, container) from the actor.
func (e *ocsfEvent) fillActor(rec *record) error {
	if e.Actor == nil {
		return nil
	}
	uid := ""
	if e.Actor.User != nil {
		uid = e.Actor.User.UID
	}
	if p := e.Actor.Process; p != nil {
		rec.Comm, uid = p.Name, p.User.UID
		if p.File != nil {
			rec.Exe = p.File.Path
		}
		if p.Container != nil {
			rec.ContainerID, rec.Container = p.Container.UID, p.Container.Name
		}
	}
	if uid == "" {
		return nil
	}
	n, err := strconv.ParseUint(uid, 10, 32)
	if err != nil {
		return fmt.Errorf("OCSF actor uid %q is not a uid: %w", uid, err)
	}
	rec.UID = uint32(n)
	return nil
}
