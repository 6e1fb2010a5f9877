// Package suggest turns what audit mode saw into the policy exceptions
// enforce mode will need: the roll-out is to run in audit mode for a while,
// let suggest write the rules the audit events call for, review them, then
// enforce.
//
// It reads the daemon's events (internal/events' JSON or internal/ocsf's
// OCSF, one per line), keeps the audit verdicts, and writes one rule per
// workload for the two refusals a rule can lift: imdsv1_no_token (allowV1)
// and non_host_netns (allowNonHostNetns). A workload is named by the
// narrowest cgroup glob that survives its restarts (see workloadOf); a
// pod's container whose events carry its names by those names, so that the
// rule survives the pod's re-creation too (see namedWorkload).
// Everything else audit saw is listed, with counts, in the policy's closing
// comment: refusals no rule should lift (relayed requests, long tokens,
// bounds) and workloads no glob can name on its own (the root cgroup).
//
// The output is a whole policy file, checked with internal/policy before it
// is returned, so that it is what imdsguard check accepts.
package suggest

import (
	"fmt"
	"io"
	"time"

	yaml "gopkg.in/yaml.v3"

	"github.com/imdsguard/imdsguard/internal/policy"
)

// Source is one events stream and its name for messages.
type Source struct {
	Name string
	R    io.Reader
}

// Config says what to read and what to build on.
type Config struct {
	// Since keeps only the events at or after Now()-Since; 0 keeps all.
	Since time.Duration
	// Now is the clock Since counts back from; nil is time.Now. Tests set
	// it, so that their output does not depend on when they run.
	Now func() time.Time
	// Base is the operator's current policy file, nil for a fresh policy.
	// Its keys, comments and rules are kept; the suggested rules are
	// placed among its rules.
	Base       []byte
	BaseSource string
	// Inputs name the event files, for the policy's header.
	Inputs []string
}

func (c Config) cutoff() time.Time {
	if c.Since <= 0 {
		return time.Time{}
	}
	now := time.Now
	if c.Now != nil {
		now = c.Now
	}
	return now().Add(-c.Since)
}

// Result is the suggested policy and what went into it.
type Result struct {
	YAML    []byte // the policy file, validated
	Rules   int    // rules added or extended
	Covered uint64 // audit events the rules answer
	LeftOut uint64 // audit events no rule was suggested for
	Stats   Stats
}

// Suggest reads the events and writes the policy.
func Suggest(cfg Config, sources []Source) (*Result, error) {
	base, doc, err := parseBase(cfg)
	if err != nil {
		return nil, err
	}
	var rules []policy.Rule
	if base != nil {
		rules = base.Rules
	}
	t := newTally(rules)
	st, err := readSince(sources, cfg.cutoff(), t.add)
	if err != nil {
		return nil, err
	}
	sugg := plan(t)
	nameRules(sugg, rules)
	out, err := render(doc, sugg, header(cfg, st, sugg, t, base), footer(t))
	if err != nil {
		return nil, err
	}
	if err := validate(out, sugg); err != nil {
		return nil, err
	}
	return &Result{YAML: out, Rules: len(sugg), Covered: groupedEvents(sugg), LeftOut: leftEvents(t), Stats: st}, nil
}

// parseBase parses the operator's policy twice: with internal/policy, to
// know its rules and refuse a file check would refuse, and as a YAML node
// tree, to add rules while keeping everything else, comments included. The
// strict parse admits no anchors, aliases or tags, so the tree holds
// nothing a re-encoding could change.
func parseBase(cfg Config) (*policy.Policy, *yaml.Node, error) {
	if cfg.Base == nil {
		return nil, nil, nil
	}
	base, err := policy.Parse(cfg.Base, cfg.BaseSource)
	if err != nil {
		return nil, nil, fmt.Errorf("reading the current policy: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(cfg.Base, &doc); err != nil {
		return nil, nil, fmt.Errorf("reading the current policy %s: %w", cfg.BaseSource, err)
	}
	if len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		// an empty file (or one of comments only): the default policy
		return base, nil, nil
	}
	return base, &doc, nil
}

// bug ends the message of a check of suggest's own output that failed.
const bug = "(a bug in imdsguard suggest: please report it with the events that caused it)"
