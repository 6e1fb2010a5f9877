package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/imdsguard/imdsguard/internal/policy"
	"github.com/imdsguard/imdsguard/internal/suggest"
)

const suggestUsage = `usage: imdsguard suggest [--since DURATION] [--policy FILE] [FILE ...]

Reads audit-mode events (the daemon's JSON or OCSF lines) from each FILE,
"-" or no FILE meaning stdin, and prints a policy with one rule per workload
for what enforce mode would refuse and a rule can allow (imdsv1_no_token:
allowV1, non_host_netns: allowNonHostNetns). What no rule should allow is
listed, with counts, in a comment at the end.

flags:
`

// suggestOptions are suggest's flags and files.
type suggestOptions struct {
	since  time.Duration
	policy string
	files  []string
}

func suggestCommand(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	return runSuggest(args, stdin, stdout, stderr, time.Now)
}

// runSuggest is suggestCommand with the clock --since counts back from.
func runSuggest(args []string, stdin io.Reader, stdout, stderr io.Writer, now func() time.Time) error {
	opts, err := parseSuggestFlags(args, stderr)
	if err != nil {
		return err
	}
	cfg := suggest.Config{Since: opts.since, Now: now}
	if opts.policy != "" {
		if cfg.Base, err = readPolicyFile(opts.policy); err != nil {
			return err
		}
		cfg.BaseSource = opts.policy
	}
	sources, closeAll, err := openSources(opts.files, stdin)
	if err != nil {
		return err
	}
	defer closeAll()
	for _, s := range sources {
		cfg.Inputs = append(cfg.Inputs, s.Name)
	}
	res, err := suggest.Suggest(cfg, sources)
	if err != nil {
		return err
	}
	if _, err := stdout.Write(res.YAML); err != nil {
		return fmt.Errorf("writing the policy: %w", err)
	}
	// stdout is the policy; the one-line summary is for whoever runs it.
	fmt.Fprintf(stderr, "imdsguard suggest: %d rule(s) for %d of %d audit event(s); %d left out (listed at the end of the policy)\n",
		res.Rules, res.Covered, res.Stats.Audit, res.LeftOut)
	return nil
}

// parseSuggestFlags parses flags and files in any order ("suggest a.json
// --since 24h b.json"); after "--" everything is a file.
func parseSuggestFlags(args []string, stderr io.Writer) (suggestOptions, error) {
	var opts suggestOptions
	fs := flag.NewFlagSet("suggest", flag.ContinueOnError)
	since := fs.String("since", "", "keep only events newer than this, e.g. 24h, 90m or 7d (default: all)")
	fs.StringVar(&opts.policy, "policy", "", "the current policy file: its keys and rules are kept and the suggested rules placed among them (default: a fresh policy, mode enforce)")
	fs.SetOutput(io.Discard)
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fmt.Fprint(stderr, suggestUsage)
				fs.SetOutput(stderr)
				fs.PrintDefaults()
				return opts, errHelp
			}
			return opts, usageError{fmt.Errorf("suggest: %w", err)}
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		if len(args) > len(rest) && args[len(args)-len(rest)-1] == "--" {
			opts.files = append(opts.files, rest...)
			break
		}
		opts.files, args = append(opts.files, rest[0]), rest[1:]
	}
	if *since != "" {
		d, err := parseSince(*since)
		if err != nil {
			return opts, usageError{fmt.Errorf("suggest: --since: %w", err)}
		}
		opts.since = d
	}
	return opts, nil
}

// parseSince reads a Go duration ("24h", "90m") or a number of days ("7d"),
// which audit periods are usually counted in and time.ParseDuration lacks.
func parseSince(s string) (time.Duration, error) {
	var d time.Duration
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil {
			return 0, fmt.Errorf("%q is not a duration like 24h, 90m or 7d", s)
		}
		d = time.Duration(n) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("%q is not a duration like 24h, 90m or 7d", s)
		}
	}
	if d <= 0 {
		return 0, fmt.Errorf("%q: want a positive duration", s)
	}
	return d, nil
}

// readPolicyFile reads the current policy, at most the size a policy may
// have.
func readPolicyFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading policy: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, policy.MaxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading policy: %w", err)
	}
	if len(data) > policy.MaxFileBytes {
		return nil, fmt.Errorf("reading policy: %s has more than the %d bytes a policy may have", path, policy.MaxFileBytes)
	}
	return data, nil
}

// openSources opens the event files; "-" (or none at all) is stdin.
func openSources(files []string, stdin io.Reader) ([]suggest.Source, func(), error) {
	if len(files) == 0 {
		files = []string{"-"}
	}
	var sources []suggest.Source
	var opened []*os.File
	closeAll := func() {
		for _, f := range opened {
			f.Close()
		}
	}
	for _, name := range files {
		if name == "-" {
			sources = append(sources, suggest.Source{Name: "<stdin>", R: stdin})
			continue
		}
		f, err := os.Open(name)
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("opening events: %w", err)
		}
		opened = append(opened, f)
		sources = append(sources, suggest.Source{Name: name, R: f})
	}
	return sources, closeAll, nil
}
