package main

import (
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/sovkeys/sovkeys/services/audit"
	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/infra/writeonce"
)

// Transparency log commands (the work is in shared/infra/auditlog):
//
//	sovkeys audit verify --tenant T | --keystore P | --operator [--first N --last M] [--checkpoint F]
//	                     [--witness VKEY ... --quorum K] [--public-key F] [--deployment D]
//	                     [--s3-bucket B ... | --from objects] [--json]
//	sovkeys audit verify --proof FILE --public-key F [--witness VKEY ... --quorum K]
//	sovkeys audit verify --v1 ...   (the version-1 hash chain, as before)
//	sovkeys audit prove  --tenant T | --keystore P | --operator --seq N [bucket flags] [--public-key F]

// tlogFlags locate a log and the keys that vouch for it.
type tlogFlags struct {
	conn                                     connFlags
	sf                                       scopeFlags
	keyFile, from, pool, deployment          string
	s3Endpoint, s3Region, s3Bucket, s3Prefix string
	s3PathStyle                              bool
	witnesses                                multiFlag
	quorum                                   int
}

// multiFlag is a repeatable string flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func (f *tlogFlags) register(fs *flag.FlagSet, getenv func(string) string) {
	f.conn.register(fs, getenv)
	f.sf.register(fs)
	fs.StringVar(&f.keyFile, "public-key", "", "audit public key, PEM (from `sovkeys audit public-key` or GET /v1/audit-public-key)")
	fs.StringVar(&f.from, "from", "", "objects (the JetStream export, over NATS) | s3; default s3 when --s3-bucket is set")
	fs.StringVar(&f.pool, "pool", "default", "over NATS without --public-key: the pool whose published audit key to use")
	fs.StringVar(&f.deployment, "deployment", envOr(getenv, "SOVKEYS_AUDIT_DEPLOYMENT", audit.DefaultDeployment), "deployment name in the checkpoints' origin (env SOVKEYS_AUDIT_DEPLOYMENT)")
	fs.StringVar(&f.s3Endpoint, "s3-endpoint", getenv("SOVKEYS_S3_ENDPOINT"), "S3 endpoint URL (empty: AWS)")
	fs.StringVar(&f.s3Region, "s3-region", envOr(getenv, "SOVKEYS_S3_REGION", "us-east-1"), "S3 region")
	fs.StringVar(&f.s3Bucket, "s3-bucket", "", "the bucket holding the export")
	fs.StringVar(&f.s3Prefix, "s3-prefix", audit.DefaultPrefix, "key prefix of the export in the bucket")
	fs.BoolVar(&f.s3PathStyle, "s3-path-style", true, "path-style S3 addressing")
	fs.Var(&f.witnesses, "witness", "a witness key (name+id+base64, from `sovkeys witness --print-key`); repeatable")
	fs.IntVar(&f.quorum, "quorum", 0, "cosignatures of distinct --witness keys required")
}

// trust builds the verifier configuration; over NATS without a key file it
// uses the published key (and says so).
func (f *tlogFlags) trust(ctx context.Context, stderr io.Writer) (auditlog.Trust, error) {
	tr := auditlog.Trust{Deployment: f.deployment, Quorum: f.quorum}
	for _, w := range f.witnesses {
		v, err := auditlog.ParseCosignerVKey(w)
		if err != nil {
			return tr, err
		}
		tr.Witnesses = append(tr.Witnesses, v)
	}
	if f.quorum > len(tr.Witnesses) {
		return tr, fmt.Errorf("%w: --quorum %d with %d --witness keys", shared.ErrConfigValidation, f.quorum, len(tr.Witnesses))
	}
	var pub *ecdsa.PublicKey
	if f.keyFile != "" {
		data, err := os.ReadFile(f.keyFile)
		if err != nil {
			return tr, fmt.Errorf("audit public key: %w", err)
		}
		if pub, err = auditlog.ParsePublicKey(data); err != nil {
			return tr, err
		}
	} else {
		if f.s3Bucket != "" || f.from == "s3" {
			return tr, fmt.Errorf("%w: verifying a bucket needs --public-key", shared.ErrConfigValidation)
		}
		nc, js, err := connectCLI(ctx, f.conn, stderr)
		if err != nil {
			return tr, err
		}
		defer nc.Close()
		spki, err := publishedAuditKey(ctx, nc, js, f.pool)
		if err != nil {
			return tr, err
		}
		if pub, err = auditlog.ParsePublicKey(spki); err != nil {
			return tr, err
		}
		fmt.Fprintf(stderr, "using the audit key published for pool %s (sha256 %s); pass --public-key to check against a key you hold\n",
			f.pool, auditlog.KeyID(spki))
	}
	tr.LogKey = pub
	return tr, nil
}

// bucket opens the export: S3, or the JetStream object store over NATS.
func (f *tlogFlags) bucket(ctx context.Context, stderr io.Writer, getenv func(string) string) (auditlog.Bucket, func(), error) {
	from := f.from
	if from == "" {
		from = "objects"
		if f.s3Bucket != "" {
			from = "s3"
		}
	}
	switch from {
	case "s3":
		b, err := auditlog.NewS3Bucket(ctx, writeonce.S3Config{
			Endpoint: f.s3Endpoint, Region: f.s3Region, Bucket: f.s3Bucket, Prefix: f.s3Prefix, UsePathStyle: f.s3PathStyle,
			AccessKeyID: getenv("SOVKEYS_S3_ACCESS_KEY_ID"), SecretAccessKey: getenv("SOVKEYS_S3_SECRET_ACCESS_KEY"),
		})
		return b, func() {}, err
	case "objects", "nats":
		nc, js, err := connectCLI(ctx, f.conn, stderr)
		if err != nil {
			return nil, nil, err
		}
		b, err := auditlog.OpenObjectBucket(ctx, js)
		if err != nil {
			nc.Close()
			return nil, nil, err
		}
		return b, nc.Close, nil
	}
	return nil, nil, fmt.Errorf("--from %q: want objects or s3: %w", from, errUsage)
}

// auditTlogVerify is `sovkeys audit verify`.
func auditTlogVerify(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	if i := slices.Index(args, "--v1"); i >= 0 {
		v1 := append([]string{"audit", "verify-v1"}, slices.Delete(slices.Clone(args), i, i+1)...)
		return dispatch(ctx, commands(), v1, stdio{getenv: getenv, stdout: stdout, stderr: stderr})
	}
	var (
		f                       tlogFlags
		first, last             uint64
		proofFile, checkpointFn string
		asJSON                  bool
		timeout, wait           time.Duration
	)
	fs := flag.NewFlagSet("audit verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	f.register(fs, getenv)
	fs.Uint64Var(&first, "first", 0, "check records from this one (default 1)")
	fs.Uint64Var(&last, "last", 0, "check records up to this one (default: the signed tree's size)")
	fs.StringVar(&checkpointFn, "checkpoint", "", "verify against this signed checkpoint (one you kept) instead of the bucket's newest")
	fs.StringVar(&proofFile, "proof", "", "verify one inclusion proof (from `sovkeys audit prove`) offline")
	fs.BoolVar(&asJSON, "json", false, "print the report as JSON")
	fs.DurationVar(&timeout, "timeout", 10*time.Minute, "give up after this long")
	fs.DurationVar(&wait, "wait", 30*time.Second, "when the log has no signed checkpoint yet (records are signed in batches), wait this long for the first one; 0 fails at once")
	fs.Bool("v1", false, "verify the version-1 hash chain (per-record objects and the log stream) instead")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: %w", fs.Arg(0), errUsage)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if proofFile != "" {
		return verifyProofFile(ctx, &f, proofFile, stdout, stderr, asJSON)
	}
	sc, err := f.sf.scope()
	if err != nil {
		return err
	}
	tr, err := f.trust(ctx, stderr)
	if err != nil {
		return err
	}
	opts := auditlog.TlogOptions{From: first, To: last}
	if checkpointFn != "" {
		if opts.Checkpoint, err = os.ReadFile(checkpointFn); err != nil {
			return err
		}
	}
	b, closeFn, err := f.bucket(ctx, stderr, getenv)
	if err != nil {
		return err
	}
	defer closeFn()
	if opts.Checkpoint == nil {
		if err := waitForCheckpoint(ctx, b, sc, wait, stderr); err != nil {
			return err
		}
	}
	rep, err := auditlog.VerifyTlog(ctx, b, sc, tr, opts)
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	fmt.Fprintf(stdout, "verified %s from %s: records %d..%d gapless, hash-chained and in the signed tree of %d records (root %s; %d earlier checkpoints consistent; %d witness cosignatures)\n",
		sc, rep.Source, rep.First, rep.Last, rep.Size, rep.Root, rep.History, len(rep.Cosigners))
	if rep.V1Checkpoints > 0 {
		fmt.Fprintf(stdout, "version-1 checkpoints: %d match the tree (cut-over at record %d)\n", rep.V1Checkpoints, rep.V1Cutover)
	}
	return nil
}

// waitForCheckpoint waits up to wait for the scope's first signed
// checkpoint: a scope whose first records are still being batched has
// none yet, and verification would report record 1 missing. A log that
// stays without one past wait is left to VerifyTlog to report.
func waitForCheckpoint(ctx context.Context, b auditlog.Bucket, sc auditlog.Scope, wait time.Duration, stderr io.Writer) error {
	deadline := time.Now().Add(wait)
	said := false
	for {
		_, err := auditlog.LatestCheckpoint(ctx, b, sc)
		if !errors.Is(err, auditlog.ErrNotFound) || !time.Now().Before(deadline) {
			return nil // found, another error (VerifyTlog reports it), or waited enough
		}
		if !said {
			fmt.Fprintf(stderr, "%s has no signed checkpoint yet; waiting up to %s for the first one (--wait)\n", sc, wait)
			said = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func verifyProofFile(ctx context.Context, f *tlogFlags, file string, stdout, stderr io.Writer, asJSON bool) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	var p auditlog.Proof
	if err := json.Unmarshal(data, &p); err != nil {
		return fmt.Errorf("proof %s: %w", file, err)
	}
	tr, err := f.trust(ctx, stderr)
	if err != nil {
		return err
	}
	r, th, err := p.Verify(tr)
	if err != nil {
		return err
	}
	if asJSON {
		return json.NewEncoder(stdout).Encode(map[string]any{"kind": p.Kind, "scope": p.Scope, "seq": p.Seq, "tree_size": th.Size, "record": r})
	}
	_, err = fmt.Fprintf(stdout, "verified: record %d of %s is in the signed tree of %d records (%s %s, %s)\n",
		p.Seq, auditlog.Scope{Kind: p.Kind, ID: p.Scope}, th.Size, r.Operation.API, r.Result, r.End)
	return err
}

// auditProve is `sovkeys audit prove`: a record and its inclusion proof
// against the newest signed checkpoint, as JSON.
func auditProve(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	var (
		f            tlogFlags
		seq          uint64
		checkpointFn string
	)
	fs := flag.NewFlagSet("audit prove", flag.ContinueOnError)
	fs.SetOutput(stderr)
	f.register(fs, getenv)
	fs.Uint64Var(&seq, "seq", 0, "the record's sequence number")
	fs.StringVar(&checkpointFn, "checkpoint", "", "prove against this signed checkpoint instead of the bucket's newest")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 || seq == 0 {
		return fmt.Errorf("--seq N and no arguments: %w", errUsage)
	}
	sc, err := f.sf.scope()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	var cp []byte
	if checkpointFn != "" {
		if cp, err = os.ReadFile(checkpointFn); err != nil {
			return err
		}
	}
	b, closeFn, err := f.bucket(ctx, stderr, getenv)
	if err != nil {
		return err
	}
	defer closeFn()
	p, err := auditlog.Prove(ctx, b, sc, seq, cp)
	if err != nil {
		return err
	}
	if f.keyFile != "" {
		// Check before handing it out: the bucket is not trusted.
		tr, err := f.trust(ctx, stderr)
		if err != nil {
			return err
		}
		tr.Quorum = 0
		if _, _, err := p.Verify(tr); err != nil {
			return err
		}
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(p)
}
