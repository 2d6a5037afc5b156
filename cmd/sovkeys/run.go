package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
)

const usage = `sovkeys - hold-your-own-key service

Services:
  sovkeys standalone --data DIR [--listen 127.0.0.1:8443] [--nats-listen 127.0.0.1:4222]
  sovkeys gateway    --nats URL --creds FILE --listen ADDR --tls-cert F --tls-key F
  sovkeys authn      --nats URL --creds FILE
  sovkeys keyworker  --nats URL --creds FILE --pool NAME --hsm-module SO --hsm-token-label L (PIN: SOVKEYS_HSM_PIN or --hsm-pin-file)
  sovkeys audit      --nats URL --creds FILE

Operator commands (--nats/--creds or SOVKEYS_NATS_URL/SOVKEYS_NATS_CREDS):
  sovkeys xks keystore create --prefix PREFIX [--pool default]
  sovkeys xks keystore list
  sovkeys xks keystore rotate-credential --prefix PREFIX
  sovkeys xks keystore retire-credential --prefix PREFIX --access-key-id ID
  sovkeys xks keystore policy set --prefix PREFIX [--allow-principal ARN]... [--allow-vpc VPC]... [--allow-vpce VPCE]...
  sovkeys xks key create --keystore PREFIX --id KEYID --usage encrypt,decrypt|encrypt|decrypt|none [--label L] [--existing]
  sovkeys xks key disable|enable --keystore PREFIX --id KEYID
  sovkeys xks key list --keystore PREFIX
  sovkeys tenant create --id TENANT [--ekt-name NAME] [--audit-bucket B] [--auth mtls|aws]
                        [--account A --role-arn R --region R --check-source-ip]   (aws)
  sovkeys tenant list | show --id T | disable --id T | enable --id T
  sovkeys instance issue-cert --tenant TENANT --instance INSTANCE_ID --out DIR [--days 365]
  sovkeys killswitch engage  --all | --keystore PREFIX | --tenant T  --reason TEXT
  sovkeys killswitch release --all | --keystore PREFIX | --tenant T  [--reason TEXT]
  sovkeys killswitch status
  sovkeys unseal [--share SHARE]...          (shares on stdin without --share)
  sovkeys unseal split --pool P --shares N --threshold K   (PIN on stdin)
  sovkeys audit verify --tenant T | --keystore P | --operator [--from nats|objects | --s3-bucket B --public-key F]
  sovkeys audit checkpoint --tenant T | --keystore P | --operator
  sovkeys audit public-key [--pool P]
  sovkeys audit bench --events N --scopes S [--rate R]
`

// errUsage makes run print the usage text.
var errUsage = errors.New("usage")

// run is the whole program; main only supplies the process's environment.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	err := dispatch(ctx, args, getenv, stdout, stderr)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errUsage), errors.Is(err, flag.ErrHelp):
		fmt.Fprint(stderr, usage)
		return 2
	default:
		fmt.Fprintf(stderr, "sovkeys: %v\n", err)
		return 1
	}
}

func dispatch(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errUsage
	}
	switch args[0] {
	case "standalone":
		return runStandalone(ctx, args[1:], getenv, stdout, stderr)
	case "gateway", "authn", "keyworker", "audit":
		if args[0] == "audit" && len(args) > 1 && isAuditCommand(args[1]) {
			return runAuditCommand(ctx, args[1:], getenv, stdout, stderr)
		}
		return runService(ctx, args[0], args[1:], getenv, stderr)
	case "xks":
		return runXKS(ctx, args[1:], getenv, stdout, stderr)
	case "tenant":
		return runTenant(ctx, args[1:], getenv, stdout, stderr)
	case "instance":
		return runInstance(ctx, args[1:], getenv, stdout, stderr)
	case "killswitch":
		return runKillswitch(ctx, args[1:], getenv, stdout, stderr)
	case "unseal":
		return runUnseal(ctx, args[1:], getenv, os.Stdin, stdout, stderr)
	case "witness":
		return runWitness(ctx, args[1:], stdout, stderr, getenv)
	case "help", "-h", "--help":
		return errUsage
	}
	return fmt.Errorf("unknown command %q: %w", args[0], errUsage)
}

// newLogger returns the JSON logger of a process.
func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("%w: log level %q", shared.ErrConfigValidation, level)
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// connFlags are the flags every mesh client shares.
type connFlags struct {
	url, creds, ca string
}

func (c *connFlags) register(fs *flag.FlagSet, getenv func(string) string) {
	fs.StringVar(&c.url, "nats", envOr(getenv, "SOVKEYS_NATS_URL", "nats://127.0.0.1:4222"), "NATS server URL(s), comma separated (env SOVKEYS_NATS_URL)")
	fs.StringVar(&c.creds, "creds", getenv("SOVKEYS_NATS_CREDS"), "NATS credentials file (env SOVKEYS_NATS_CREDS)")
	fs.StringVar(&c.ca, "nats-ca", getenv("SOVKEYS_NATS_CA"), "CA file for NATS TLS (env SOVKEYS_NATS_CA)")
}

func (c *connFlags) config(name string) mesh.ConnConfig {
	return mesh.ConnConfig{URL: c.url, CredsFile: c.creds, CAFile: c.ca, Name: name}
}

// topologyFlags size streams and buckets.
type topologyFlags struct {
	t mesh.Topology
}

func (tf *topologyFlags) register(fs *flag.FlagSet) {
	tf.t = mesh.DefaultTopology()
	fs.IntVar(&tf.t.Replicas, "replicas", tf.t.Replicas, "JetStream replicas of every stream and KV bucket (3 in a production cluster)")
	fs.IntVar(&tf.t.RequestQueueDepth, "request-queue-depth", tf.t.RequestQueueDepth, "max requests queued for authn before ThrottlingException")
	fs.IntVar(&tf.t.WorkQueueDepth, "work-queue-depth", tf.t.WorkQueueDepth, "max work queued per keyworker pool before ThrottlingException")
	fs.IntVar(&tf.t.WorkBudget, "pool-budget", tf.t.WorkBudget, "max operations in flight per keyworker pool (the HSM's concurrency budget)")
	fs.DurationVar(&tf.t.AuditMaxAge, "audit-max-age", tf.t.AuditMaxAge, "how long audit events stay in the stream")
	fs.BoolVar(&tf.t.FileStorageWork, "file-storage-queues", false, "keep request/work queues on disk instead of memory")
}

func envOr(getenv func(string) string, key, def string) string {
	if v := getenv(key); v != "" {
		return v
	}
	return def
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// listFlag is a repeatable, comma-separated flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	*l = append(*l, splitList(v)...)
	return nil
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
