package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
)

// connFlags are the flags every mesh client shares.
type connFlags struct {
	url, creds, ca string
	// inProcess is set by standalone for its own services: they reach the
	// embedded server without a socket (mesh.ConnConfig.InProcess).
	inProcess nats.InProcessConnProvider
}

func (c *connFlags) register(fs *flag.FlagSet, getenv func(string) string) {
	fs.StringVar(&c.url, "nats", envOr(getenv, "SOVKEYS_NATS_URL", "nats://127.0.0.1:4222"), "NATS server URL(s), comma separated (env SOVKEYS_NATS_URL)")
	fs.StringVar(&c.creds, "creds", getenv("SOVKEYS_NATS_CREDS"), "NATS credentials file (env SOVKEYS_NATS_CREDS)")
	fs.StringVar(&c.ca, "nats-ca", getenv("SOVKEYS_NATS_CA"), "CA file for NATS TLS (env SOVKEYS_NATS_CA)")
}

func (c *connFlags) config(name string) mesh.ConnConfig {
	return mesh.ConnConfig{URL: c.url, CredsFile: c.creds, CAFile: c.ca, Name: name, InProcess: c.inProcess}
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
	fs.IntVar(&tf.t.Siblings, "stream-siblings", 0, "sibling request/work/audit streams with leaders on different nodes, so a node loss fails over at once (init: default --replicas; services: bind every one that exists)")
}

// commonFlags are the flags of every service: NATS connection, stream
// topology and logging.
type commonFlags struct {
	conn          connFlags
	topo          topologyFlags
	logLevel      string
	metricsListen string
}

func (c *commonFlags) register(fs *flag.FlagSet, getenv func(string) string) {
	c.conn.register(fs, getenv)
	c.topo.register(fs)
	fs.StringVar(&c.logLevel, "log-level", envOr(getenv, "SOVKEYS_LOG_LEVEL", "info"), "debug|info|warn|error (env SOVKEYS_LOG_LEVEL)")
	fs.StringVar(&c.metricsListen, "metrics-listen", getenv("SOVKEYS_METRICS_LISTEN"), metricsFlagUsage)
}

// commonFlagNames lists the flags commonFlags registers, for the docs.
func commonFlagNames() map[string]bool {
	fs := flag.NewFlagSet("", flag.ContinueOnError)
	var c commonFlags
	c.register(fs, func(string) string { return "" })
	names := map[string]bool{}
	fs.VisitAll(func(f *flag.Flag) { names[f.Name] = true })
	return names
}

// newLogger returns the JSON logger of a process.
func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("%w: log level %q", shared.ErrConfigValidation, level)
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l})), nil
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
