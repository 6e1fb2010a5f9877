package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
)

// errHelp means -h was asked for and usage was printed.
var errHelp = errors.New("help requested")

// parseFlags parses a subcommand's flags and refuses positional arguments,
// turning every mistake into one line that names it.
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stderr)
			fs.PrintDefaults()
			return errHelp
		}
		return usageError{fmt.Errorf("%s: %w", fs.Name(), err)}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("%s: unexpected argument %q", fs.Name(), fs.Arg(0))}
	}
	return nil
}
