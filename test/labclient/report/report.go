// Package report is labclient's JSON report: labclient writes it, the tests
// that run labclient read it, so both sides share one definition.
package report

import (
	"encoding/json"
	"fmt"
	"strings"
)

// Write is the outcome of one write.
type Write struct {
	N     int    `json:"n"`
	Errno string `json:"errno"`
}

// Report is printed as JSON on the last line of labclient's stdout.
type Report struct {
	PID  int    `json:"pid"`
	Mode string `json:"mode"`
	Addr string `json:"addr"`
	// LocalAddr is the connected socket's address (getsockname), so a test
	// can match the daemon's reports by source port.
	LocalAddr string `json:"local_addr,omitempty"`
	// ConnectErrno is "" on success, else the errno name (EPERM, ...).
	ConnectErrno string  `json:"connect_errno"`
	ConnectMS    float64 `json:"connect_ms"`
	Writes       []Write `json:"writes"`
	PreWrite     Write   `json:"pre_write"` // -pre-write, before the wait
	// ShutdownErrno is the errno of shutdown(SHUT_WR) in raw mode.
	ShutdownErrno string `json:"shutdown_errno,omitempty"`
	Status        int    `json:"status"`   // http: response status
	Body          string `json:"body"`     // http: response body
	Response      string `json:"response"` // raw: all bytes read
	ReadErrno     string `json:"read_errno"`
	// Token* describe the -fetch-token PUT.
	TokenStatus       int    `json:"token_status,omitempty"`
	TokenConnectErrno string `json:"token_connect_errno,omitempty"`
	TokenError        string `json:"token_error,omitempty"`
	// WaitFileTimeout is set when -keepalive-wait ran out before -wait-file
	// appeared.
	WaitFileTimeout bool `json:"wait_file_timeout,omitempty"`
	// ConnectErrnos counts the outcome of each -repeat connection ("" is success).
	ConnectErrnos map[string]int `json:"connect_errnos,omitempty"`
	Error         string         `json:"error"`
}

// AddError appends a problem to Error.
func (r *Report) AddError(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if r.Error != "" {
		r.Error += "; "
	}
	r.Error += msg
}

// Parse decodes labclient's stdout: the report is its last line (earlier
// lines are progress markers).
func Parse(out []byte) (Report, error) {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	var r Report
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil {
		return Report{}, fmt.Errorf("labclient output is not a report: %w", err)
	}
	return r, nil
}
