// Command imdsguard guards the cloud instance metadata service on a Linux
// host with eBPF: see README.md.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

// usageError marks a mistake in how the command was called (exit code 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

const usage = `usage: imdsguard <command> [flags]

commands:
  run       attach the guard and report events until SIGINT/SIGTERM
  check     validate a policy file and print the effective policy
  status    show what is attached and pinned, with counters (--json for scripts)
  detach    remove every hook, pin and table imdsguard made
  suggest   write the policy rules that audit-mode events call for
  version   print the version

run 'imdsguard <command> -h' for a command's flags.
`

func main() {
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

func realMain(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "run":
		err = runCommand(args[1:], stdout, stderr)
	case "check":
		err = checkCommand(args[1:], stdout, stderr)
	case "status":
		err = statusCommand(args[1:], stdout, stderr)
	case "detach":
		err = detachCommand(args[1:], stdout, stderr)
	case "suggest":
		err = suggestCommand(args[1:], os.Stdin, stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintf(stdout, "imdsguard %s\n", version)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		err = usageError{fmt.Errorf("unknown command %q (want run, check, status, detach, suggest or version)", args[0])}
	}
	if err == nil {
		return 0
	}
	if errors.Is(err, errHelp) {
		return 0
	}
	if errors.Is(err, errNotEnforcing) {
		return 3
	}
	fmt.Fprintf(stderr, "imdsguard: %v\n", err)
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}
