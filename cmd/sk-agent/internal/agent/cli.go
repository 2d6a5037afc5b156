package agent

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/sovkeys/sovkeys/cmd/sk-agent/internal/secmem"
)

// command is one sk-agent subcommand: the table makes the help text and
// docs/agent.md's command list.
type command struct {
	name, args, summary string
	// root: the command touches devices or mounts.
	root bool
	// secrets: the command holds a volume secret (memory is locked first).
	secrets bool
	// setup declares the command's flags and returns its action.
	setup func(fs *flag.FlagSet) func(ctx context.Context, a *Agent, pos []string) error
}

func nitroFlag(fs *flag.FlagSet) *bool {
	return fs.Bool("ignore-nitro-check", false, "skip the Nitro check (AWS identity)")
}

func boolAlias(fs *flag.FlagSet, p *bool, names []string, usage string) {
	for _, n := range names {
		fs.BoolVar(p, n, false, usage)
	}
}

func stringAlias(fs *flag.FlagSet, p *string, names []string, def, usage string) {
	for _, n := range names {
		fs.StringVar(p, n, def, usage)
	}
}

func exactly(pos []string, n int, what string) error {
	if len(pos) != n {
		return usagef("expected %s, got %d argument(s)", what, len(pos))
	}
	return nil
}

var commands = []command{
	{name: "prep-dev", args: "[options] DEVICE", summary: "turn an empty block device into a sovkeys volume (GPT: secret store + LUKS2 data)", root: true, secrets: true,
		setup: func(fs *flag.FlagSet) func(context.Context, *Agent, []string) error {
			var o PrepOptions
			stringAlias(fs, &o.Filesystem, []string{"f", "filesystem"}, "xfs", "filesystem inside LUKS: "+strings.Join(Filesystems, "|"))
			stringAlias(fs, &o.Automount, []string{"a", "automount"}, "", "register for automount on this mount point and mount it")
			fs.BoolVar(&o.DeleteAllExistingData, "delete-all-existing-data", false, "allow a device that is not empty: ERASES IT")
			fs.StringVar(&o.PBKDF, "pbkdf", "", "LUKS2 key derivation (cryptsetup --pbkdf): argon2id|argon2i|pbkdf2; default pbkdf2 with 1000 iterations (the key is a random secret, not a passphrase)")
			fs.IntVar(&o.PBKDFIterations, "pbkdf-iterations", 0, "cryptsetup --pbkdf-force-iterations (0 with --pbkdf: cryptsetup benchmarks)")
			nitro := nitroFlag(fs)
			return func(ctx context.Context, a *Agent, pos []string) error {
				if err := exactly(pos, 1, "DEVICE"); err != nil {
					return err
				}
				o.Device, o.IgnoreNitroCheck = pos[0], *nitro
				return a.PrepDev(ctx, o)
			}
		}},
	{name: "mount", args: "[options] DEVICE MOUNT_POINT | --check DEVICE", summary: "unlock a sovkeys volume with the service and mount it", root: true, secrets: true,
		setup: func(fs *flag.FlagSet) func(context.Context, *Agent, []string) error {
			var o MountOptions
			fs.BoolVar(&o.Check, "check", false, "only prove the secret opens the LUKS keyslot (maps and mounts nothing)")
			nitro := nitroFlag(fs)
			return func(ctx context.Context, a *Agent, pos []string) error {
				o.IgnoreNitroCheck = *nitro
				switch {
				case o.Check && len(pos) >= 1 && len(pos) <= 2:
					o.Device = pos[0]
				case !o.Check && len(pos) == 2:
					o.Device, o.MountPoint = pos[0], pos[1]
				default:
					return usagef("expected DEVICE MOUNT_POINT (or --check DEVICE)")
				}
				return a.Mount(ctx, o)
			}
		}},
	{name: "umount", args: "MOUNT_POINT|DEVICE | --all", summary: "unmount a sovkeys volume and close its LUKS mapping", root: true,
		setup: func(fs *flag.FlagSet) func(context.Context, *Agent, []string) error {
			var o UmountOptions
			fs.BoolVar(&o.All, "all", false, "unmount every automount entry that is mounted")
			return func(ctx context.Context, a *Agent, pos []string) error {
				if !o.All {
					if err := exactly(pos, 1, "MOUNT_POINT or DEVICE"); err != nil {
						return err
					}
					o.Target = pos[0]
				}
				return a.Umount(ctx, o)
			}
		}},
	{name: "takeown", args: "[-i SOURCE_INSTANCE] DEVICE", summary: "make this instance the owner of a volume restored from another instance of the tenant", root: true,
		setup: func(fs *flag.FlagSet) func(context.Context, *Agent, []string) error {
			var o TakeownOptions
			stringAlias(fs, &o.SourceInstance, []string{"i", "source-instance"}, "", "instance that owned the volume (default: the owner the store records)")
			nitro := nitroFlag(fs)
			return func(ctx context.Context, a *Agent, pos []string) error {
				if err := exactly(pos, 1, "DEVICE"); err != nil {
					return err
				}
				o.Device, o.IgnoreNitroCheck = pos[0], *nitro
				return a.Takeown(ctx, o)
			}
		}},
	{name: "automount", args: "[--check]", summary: "mount every volume registered in the automount file (boot)", root: true, secrets: true,
		setup: func(fs *flag.FlagSet) func(context.Context, *Agent, []string) error {
			var o AutomountOptions
			fs.BoolVar(&o.Check, "check", false, "only prove each secret opens its keyslot")
			nitro := nitroFlag(fs)
			return func(ctx context.Context, a *Agent, pos []string) error {
				if err := exactly(pos, 0, "no argument"); err != nil {
					return err
				}
				o.IgnoreNitroCheck = *nitro
				return a.Automount(ctx, o)
			}
		}},
	{name: "status", args: "[DEVICE...]", summary: "report layout, store format, owner, signature and mount state (JSON lines)", root: true,
		setup: func(fs *flag.FlagSet) func(context.Context, *Agent, []string) error {
			return func(ctx context.Context, a *Agent, pos []string) error { return a.Status(ctx, pos) }
		}},
	{name: "enroll", args: "--tenant TENANT --instance INSTANCE_ID [--key FILE] [--force]", summary: "make this instance's key here and print a CSR for `sovkeys instance issue-cert --csr`",
		setup: func(fs *flag.FlagSet) func(context.Context, *Agent, []string) error {
			var o EnrollOptions
			fs.StringVar(&o.Tenant, "tenant", "", "tenant id")
			fs.StringVar(&o.Instance, "instance", "", "this instance's id")
			fs.StringVar(&o.KeyFile, "key", "", "private key file to write (default: key in the configuration)")
			fs.BoolVar(&o.Force, "force", false, "replace an existing key")
			return func(ctx context.Context, a *Agent, pos []string) error {
				if err := exactly(pos, 0, "no argument"); err != nil {
					return err
				}
				return a.Enroll(ctx, o)
			}
		}},
	{name: "check-key", args: "", summary: "compare the pinned signing key with the one the service publishes",
		setup: func(fs *flag.FlagSet) func(context.Context, *Agent, []string) error {
			return func(ctx context.Context, a *Agent, pos []string) error {
				if err := exactly(pos, 0, "no argument"); err != nil {
					return err
				}
				return a.CheckKey(ctx)
			}
		}},
}

// Usage writes the help text.
func Usage(w io.Writer) {
	fmt.Fprintln(w, "usage: sk-agent COMMAND [options] [arguments]   (sk-agent COMMAND -h for its options)")
	fmt.Fprintln(w, "\ncommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-10s %s\n             %s\n", c.name, c.args, c.summary)
	}
	fmt.Fprintln(w, "\ncommon options: --config FILE (default "+DefaultConfigFile+", or $SK_AGENT_CONFIG), --dry-run, --log-level debug|info|warn|error")
	fmt.Fprintln(w, "\nexit codes:")
	for _, e := range ExitCodes {
		fmt.Fprintf(w, "  %2d  %s\n", e.Code, e.Meaning)
	}
}

// Env is what Run takes from the process.
type Env struct {
	Getenv         func(string) string
	Stdout, Stderr io.Writer
	// Exec runs the system tools; nil means SystemExec.
	Exec Executor
	// SysRoot, MountsFile default to /sys and /proc/self/mounts.
	SysRoot, MountsFile string
	IsRoot              func() bool
	Now                 func() time.Time
	Sleep               func(context.Context, time.Duration) error
}

// Run runs one sk-agent command line and returns its exit code.
func Run(ctx context.Context, args []string, env Env) ExitCode {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		Usage(env.Stdout)
		if len(args) == 0 {
			return ExitUsage
		}
		return ExitOK
	}
	var cmd *command
	for i := range commands {
		if commands[i].name == args[0] {
			cmd = &commands[i]
		}
	}
	if cmd == nil {
		fmt.Fprintf(env.Stderr, "sk-agent: unknown command %q\n\n", args[0])
		Usage(env.Stderr)
		return ExitUsage
	}
	fs := flag.NewFlagSet("sk-agent "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	defConfig := DefaultConfigFile
	if v := env.Getenv("SK_AGENT_CONFIG"); v != "" {
		defConfig = v
	}
	configPath := fs.String("config", defConfig, "agent configuration file")
	dryRun := fs.Bool("dry-run", false, "check and print what would be done; change nothing, call no secret operation")
	logLevel := fs.String("log-level", "info", "debug|info|warn|error")
	action := cmd.setup(fs)
	fs.Usage = func() {
		fmt.Fprintf(env.Stderr, "usage: sk-agent %s %s\n  %s\n\noptions:\n", cmd.name, cmd.args, cmd.summary)
		fs.PrintDefaults()
	}
	pos, err := parseInterleaved(fs, args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return ExitOK
	}
	if err != nil {
		return ExitUsage // flag already printed why
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintln(env.Stderr, "sk-agent: --log-level:", err)
		return ExitUsage
	}
	log := slog.New(slog.NewTextHandler(env.Stderr, &slog.HandlerOptions{Level: level}))
	fail := func(err error) ExitCode {
		code := Code(err)
		fmt.Fprintf(env.Stderr, "sk-agent %s: %v (exit %d)\n", cmd.name, err, code)
		return code
	}
	isRoot := env.IsRoot
	if isRoot == nil {
		isRoot = IsRoot
	}
	if cmd.root && !isRoot() {
		return fail(ErrNotRoot)
	}
	// Status and check-key need no service for what they can check locally.
	cfg, err := LoadConfig(*configPath, cmd.name == "status" || cmd.name == "enroll")
	if err != nil {
		return fail(err)
	}
	if cmd.secrets && !*dryRun {
		if err := secmem.LockAll(); err != nil {
			log.Warn("could not lock all process memory; the secret itself is still held in a locked buffer", "err", err)
		}
	}
	a := &Agent{
		Cfg: cfg, Log: log, Out: env.Stdout, Now: env.Now, Sleep: env.Sleep, Exec: env.Exec,
		SysRoot: env.SysRoot, MountsFile: env.MountsFile, DryRun: *dryRun,
	}
	if a.Now == nil {
		a.Now = time.Now
	}
	if a.Sleep == nil {
		a.Sleep = sleepCtx
	}
	if a.Exec == nil {
		a.Exec = SystemExec{}
	}
	if a.SysRoot == "" {
		a.SysRoot = "/sys"
	}
	if a.MountsFile == "" {
		a.MountsFile = "/proc/self/mounts"
	}
	if err := action(ctx, a, pos); err != nil {
		return fail(err)
	}
	return ExitOK
}

// parseInterleaved parses flags that may follow positional arguments, as
// the original's scripts allowed (sk-prep-dev /dev/sdf -a /mnt/data).
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}
