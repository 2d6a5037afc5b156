package main

import (
	"context"
	"encoding/json"
	"flag"
	"io"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
	"github.com/sovkeys/sovkeys/shared/infra/roster"
)

// operatorTimeout bounds one operator command.
const operatorTimeout = 30 * time.Second

// operator is a connected operator CLI session.
type operator struct {
	getenv func(string) string
	nc     *nats.Conn
	js     jetstream.JetStream
	topo   mesh.Topology
	reg    *registry.Registry
	out    io.Writer
	errOut io.Writer
	stdin  io.Reader
	// signer is the person whose credential the session uses: it signs
	// admin requests and names them in the audit log (nil: not a person's
	// credential, which may read but changes nothing).
	signer *roster.Signer
	// op is the audited command under way (signedKV sends it along).
	op *currentOp
}

// person returns the session's signer, or an error saying a personal
// credential is needed.
func (o *operator) person() (*roster.Signer, error) {
	if o.signer == nil {
		return nil, shared.NewError(shared.CodeAccessDenied,
			"this credential is not a person's: admin actions need your own credential (sovkeys operator add; standalone: .data/operators/admin.creds)")
	}
	return o.signer, nil
}

func (o *operator) print(v any) error {
	enc := json.NewEncoder(o.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// opFlags are an operator command's flags: the connection, the replicas of
// the buckets it may declare, and its own (C).
type opFlags[C any] struct {
	conn connFlags
	topo mesh.Topology
	own  C
}

// operatorCommand makes an operator command: it connects to NATS with the
// common flags, opens the registry and runs fn within operatorTimeout.
func operatorCommand[C any](name, usage, short string,
	flags func(c *C, fs *flag.FlagSet),
	fn func(ctx context.Context, o *operator, c *C) error) command {
	return define(name, usage, short, groupOperator,
		func(fs *flag.FlagSet, getenv func(string) string, f *opFlags[C]) {
			f.conn.register(fs, getenv)
			f.topo = mesh.DefaultTopology()
			fs.IntVar(&f.topo.Replicas, "replicas", f.topo.Replicas, "JetStream replicas of a KV bucket this command declares (3 in a production cluster)")
			flags(&f.own, fs)
		},
		func(ctx context.Context, f *opFlags[C], s stdio) error {
			ctx, cancel := context.WithTimeout(ctx, operatorTimeout)
			defer cancel()
			nc, js, err := connectCLI(ctx, f.conn, s.stderr)
			if err != nil {
				return err
			}
			defer nc.Close()
			reg, err := registry.Open(ctx, js, f.topo)
			if err != nil {
				return err
			}
			o := &operator{getenv: s.getenv, nc: nc, js: js, topo: f.topo, reg: reg, out: s.stdout, errOut: s.stderr, stdin: s.stdin}
			reg.Keystores, reg.Keys = o.signedKV(reg.Keystores), o.signedKV(reg.Keys)
			// Keyworker answers are verified against the pools' pinned keys,
			// and seal requests boxed to them (kwadmin/answers.go); without
			// the pins bucket, signed answers are refused.
			answers := &kwadmin.AnswerKeys{}
			if pins, err := js.KeyValue(ctx, shared.BucketPins); err == nil {
				answers.KV = pins
			}
			ctx = kwadmin.WithAnswerKeys(ctx, answers)
			if f.conn.creds != "" {
				// A person's credential signs every admin request it sends.
				if o.signer, err = roster.SignerFromCreds(f.conn.creds); err == nil {
					ctx = kwadmin.WithSigner(ctx, o.signer)
				}
			}
			return fn(ctx, o, &f.own)
		})
}

// none is the flags function of an operator command without flags of its own.
func none(*struct{}, *flag.FlagSet) {}

func connectCLI(ctx context.Context, conn connFlags, stderr io.Writer) (*nats.Conn, jetstream.JetStream, error) {
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	return mesh.Connect(ctx, conn.config("sovkeys-cli"), logger)
}
