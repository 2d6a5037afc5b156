package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// command is one row of the command table: `sovkeys --help`, `sovkeys help
// CMD` and the README's command and configuration tables all come from it.
type command struct {
	Name  string // the words after "sovkeys", e.g. "xks keystore create"
	Usage string // synopsis of the flags
	Short string // one line: what it does
	Group string // groupService, groupOperator or groupHidden
	// bind registers the command's flags on fs (defaults from getenv) and
	// returns the function that runs it with the parsed values.
	bind func(fs *flag.FlagSet, getenv func(string) string) runFunc
	// raw, when set, runs the command with its arguments unparsed: the
	// command parses its own flags (the audit transparency-log commands).
	raw func(ctx context.Context, args []string, s stdio) error
	// positional, when set, names the flag a leading argument fills
	// (`sovkeys approve ID` is `sovkeys approve --id ID`).
	positional string
}

// rawCommand makes a command that parses its own flags; `sovkeys CMD -h`
// prints them.
func rawCommand(name, usage, short, group string,
	fn func(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error) command {
	return command{Name: name, Usage: usage, Short: short, Group: group,
		bind: func(*flag.FlagSet, func(string) string) runFunc { return nil },
		raw: func(ctx context.Context, args []string, s stdio) error {
			return fn(ctx, args, s.stdout, s.stderr, s.getenv)
		}}
}

// runFunc runs a command whose flags are parsed.
type runFunc func(ctx context.Context, s stdio) error

// stdio is a command's standard streams and environment.
type stdio struct {
	getenv func(string) string
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

const (
	groupService  = "Services"
	groupOperator = "Operator commands (NATS: --nats/--creds or SOVKEYS_NATS_URL/SOVKEYS_NATS_CREDS)"
	groupHidden   = ""
)

// define makes a command from a typed flags function (registers the flags
// into a C) and a run function (uses the parsed C).
func define[C any](name, usage, short, group string,
	flags func(fs *flag.FlagSet, getenv func(string) string, c *C),
	run func(ctx context.Context, c *C, s stdio) error) command {
	return command{Name: name, Usage: usage, Short: short, Group: group,
		bind: func(fs *flag.FlagSet, getenv func(string) string) runFunc {
			c := new(C)
			flags(fs, getenv, c)
			return func(ctx context.Context, s stdio) error { return run(ctx, c, s) }
		}}
}

// noFlags is the flags function of a command without flags of its own.
func noFlags[C any](*flag.FlagSet, func(string) string, *C) {}

// commands is the command table.
func commands() []command {
	cmds := serviceCommands()
	cmds = append(cmds, initCommand())
	cmds = append(cmds, xksCommands()...)
	cmds = append(cmds, xksKeyVersionCommands()...)
	cmds = append(cmds, tenantCommands()...)
	cmds = append(cmds, instanceCommands()...)
	cmds = append(cmds, killswitchCommands()...)
	cmds = append(cmds, unsealCommands()...)
	cmds = append(cmds, peopleCommands()...)
	cmds = append(cmds, peopleRequestCommands()...)
	cmds = append(cmds, auditCommands()...)
	cmds = append(cmds,
		rawCommand("audit verify", "--tenant T | --keystore PREFIX | --operator [--first N --last M] [--checkpoint F] [--proof F] [--witness VKEY... --quorum K] [--v1] (-h: flags)",
			"verify a transparency log (tiles, signed checkpoint, witnesses) or one inclusion proof, from the bucket and the public key", groupOperator, auditTlogVerify),
		rawCommand("audit prove", "--tenant T | --keystore PREFIX | --operator --seq N [--checkpoint F] (-h: flags)",
			"print a record with its inclusion proof against a signed checkpoint", groupOperator, auditProve),
		rawCommand("witness", "--listen ADDR --state DIR --name NAME --key-file F --log-key F.pem (-h: flags)",
			"a C2SP tlog-witness: cosigns audit checkpoints only after checking consistency with the last one it saw", groupService, runWitness))
	cmds = append(cmds, clusterCommands()...)
	cmds = append(cmds, hsmCommands()...)
	cmds = append(cmds, drCommands()...)
	cmds = append(cmds, define("docs", "", "print the README command and configuration tables", groupHidden, noFlags[struct{}],
		func(_ context.Context, _ *struct{}, s stdio) error {
			_, err := io.WriteString(s.stdout, readmeTables(commands()))
			return err
		}))
	return cmds
}

// flagSet returns the command's FlagSet (for help and docs) and its runner.
func (c command) flagSet(getenv func(string) string, stderr io.Writer) (*flag.FlagSet, runFunc) {
	fs := flag.NewFlagSet("sovkeys "+c.Name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	run := c.bind(fs, getenv)
	fs.Usage = func() { c.printHelp(fs, stderr) }
	return fs, run
}

func (c command) printHelp(fs *flag.FlagSet, w io.Writer) {
	fmt.Fprintf(w, "usage: sovkeys %s %s\n\n%s\n", c.Name, c.Usage, c.Short)
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if n > 0 {
		fmt.Fprintln(w, "\nflags:")
		out := fs.Output()
		fs.SetOutput(w)
		fs.PrintDefaults()
		fs.SetOutput(out)
	}
}

// errUsage marks an error in how a command was called: exit status 2.
var errUsage = errors.New("see `sovkeys help`")

// run is the whole program; main only supplies the process's environment.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	return runWith(ctx, args, stdio{getenv: getenv, stdin: os.Stdin, stdout: stdout, stderr: stderr})
}

func runWith(ctx context.Context, args []string, s stdio) int {
	err := dispatch(ctx, commands(), args, s)
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(s.stderr, "sovkeys: %v\n", err)
		return 2
	case isPending(err):
		fmt.Fprintf(s.stderr, "sovkeys: %v\n", err)
		return exitPending
	default:
		fmt.Fprintf(s.stderr, "sovkeys: %v\n", err)
		return 1
	}
}

// dispatch finds the command named by the leading words of args (the
// longest match), parses its flags and runs it.
func dispatch(ctx context.Context, cmds []command, args []string, s stdio) error {
	if len(args) == 0 {
		printUsage(s.stderr, cmds)
		return fmt.Errorf("no command: %w", errUsage)
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		return help(cmds, args[1:], s)
	}
	c, rest, ok := lookup(cmds, args)
	if !ok {
		return unknown(cmds, args, s.stderr)
	}
	if c.raw != nil {
		return c.raw(ctx, rest, s)
	}
	fs, runCmd := c.flagSet(s.getenv, s.stderr)
	if c.positional != "" && len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		rest = append([]string{"--" + c.positional, rest[0]}, rest[1:]...)
	}
	if err := fs.Parse(rest); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%s: %v: %w", c.Name, err, errUsage)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%s: unexpected argument %q (see `sovkeys help %s`): %w", c.Name, fs.Arg(0), c.Name, errUsage)
	}
	return runCmd(ctx, s)
}

// lookup returns the command whose name is the longest run of leading
// words of args, and the arguments after it.
func lookup(cmds []command, args []string) (command, []string, bool) {
	var best command
	bestN := 0
	for _, c := range cmds {
		words := strings.Fields(c.Name)
		if len(words) <= bestN || len(words) > len(args) {
			continue
		}
		match := true
		for i, w := range words {
			if args[i] != w {
				match = false
				break
			}
		}
		if match {
			best, bestN = c, len(words)
		}
	}
	return best, args[min(bestN, len(args)):], bestN > 0
}

// unknown reports an unknown command, listing the commands that start with
// the words given (`sovkeys xks` lists the xks commands).
func unknown(cmds []command, args []string, w io.Writer) error {
	var words []string
	for _, a := range args {
		if strings.HasPrefix(a, "-") {
			break
		}
		words = append(words, a)
	}
	prefix := strings.Join(words, " ")
	var near []command
	for _, c := range cmds {
		if c.Group != groupHidden && strings.HasPrefix(c.Name+" ", prefix+" ") {
			near = append(near, c)
		}
	}
	if len(near) == 0 {
		printUsage(w, cmds)
		return fmt.Errorf("unknown command %q: %w", prefix, errUsage)
	}
	for _, c := range near {
		fmt.Fprintf(w, "  sovkeys %s %s\n", c.Name, c.Usage)
	}
	return fmt.Errorf("%q needs a subcommand: %w", prefix, errUsage)
}

// help prints the overview, or one command's usage and flags.
func help(cmds []command, args []string, s stdio) error {
	if len(args) == 0 {
		printUsage(s.stdout, cmds)
		return nil
	}
	c, rest, ok := lookup(cmds, args)
	if !ok || len(rest) > 0 {
		return unknown(cmds, args, s.stderr)
	}
	fs, _ := c.flagSet(s.getenv, s.stderr)
	c.printHelp(fs, s.stdout)
	return nil
}

func printUsage(w io.Writer, cmds []command) {
	fmt.Fprintln(w, "sovkeys - hold-your-own-key service")
	for _, g := range []string{groupService, groupOperator} {
		fmt.Fprintf(w, "\n%s:\n", g)
		for _, c := range cmds {
			if c.Group == g {
				fmt.Fprintf(w, "  sovkeys %s %s\n      %s\n", c.Name, c.Usage, c.Short)
			}
		}
	}
	fmt.Fprintln(w, "\n`sovkeys help COMMAND` shows a command's flags.")
}
