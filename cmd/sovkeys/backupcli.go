package main

// `sovkeys backup --out DIR`: an online snapshot of every stream, KV bucket
// and object store of the mesh, through JetStream's own snapshot API (what
// `nats stream backup` uses), with a manifest (sizes, SHA-256 of every
// file, the newest signed checkpoint of every audit scope) signed by the
// pool's HSM key (docs/operations.md, "Disaster recovery").

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/services/keyworker"
	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
)

const (
	backupFormat   = "sovkeys-backup/v1"
	manifestFile   = "manifest.json"
	manifestSig    = "manifest.sig" // ECDSA P-384 (DER) over SHA-256 of manifest.json, hex
	snapshotChunk  = 128 << 10
	drTimeout      = 10 * time.Minute
	snapshotIdle   = 30 * time.Second // no chunk for this long: the snapshot failed
	restoreAckWait = 30 * time.Second
	jsReadyWait    = 2 * time.Minute
)

// drManifest describes one backup.
type drManifest struct {
	Format        string         `json:"format"`
	Created       time.Time      `json:"created"`
	Pool          string         `json:"pool"`
	ServerVersion string         `json:"nats_server_version"`
	Streams       []drStream     `json:"streams"`
	Skipped       []string       `json:"skipped_memory_streams,omitempty"` // transient: queues, unseal shares
	Files         []drFile       `json:"files"`
	Checkpoints   []drCheckpoint `json:"checkpoints"`
	SigningKey    []byte         `json:"signing_key"` // SPKI DER of the pool's HSM key that signed it
	TookMillis    int64          `json:"took_ms"`
}

type drStream struct {
	Name     string `json:"name"`
	Messages uint64 `json:"messages"`
	Bytes    uint64 `json:"bytes"`
	LastSeq  uint64 `json:"last_seq"`
	Snapshot string `json:"snapshot"` // file: s2-compressed tar from the server
	Meta     string `json:"meta"`     // file: the server's config and state at snapshot
}

type drFile struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// drCheckpoint is the newest signed checkpoint of one audit scope at
// backup time: restore names it in its operator record.
type drCheckpoint struct {
	Scope  string `json:"scope"`
	SHA256 string `json:"sha256"`
	Body   []byte `json:"body"` // the signed note, as `audit verify --checkpoint` takes it
}

// drFlags are backup's and restore's shared flags.
type drFlags struct {
	conn connFlags
	tok  tokenFlags
	pool string
	dir  string // --out (backup) or --from (restore)
}

// drCredFlags are the flags of `backup credential`.
type drCredFlags struct {
	trust, user, pool, out string
}

func drCommands() []command {
	return []command{
		define("backup credential", "--trust DIR --for backup|restore [--pool P] --out FILE",
			"issue the NATS credential of `sovkeys backup` or `restore` for a cluster, from the trust directory `sovkeys init` wrote (standalone: --data does it)",
			groupOperator, func(fs *flag.FlagSet, _ func(string) string, f *drCredFlags) {
				fs.StringVar(&f.trust, "trust", "", "the deployment's trust directory (operator and account seeds)")
				fs.StringVar(&f.user, "for", shared.UserBackup, "backup or restore")
				fs.StringVar(&f.pool, "pool", "default", "keyworker pool (its work queues are denied to the backup credential)")
				fs.StringVar(&f.out, "out", "", "credential file to write (created, mode 0600)")
			}, issueDRCreds),
		define("backup", "--out DIR (--data NODE_DIR | --creds BACKUP.creds) (--hsm-pin-file F | --pin-share S...)",
			"online snapshot of every stream, KV bucket and object store (JetStream snapshot API) with a manifest signed by the pool's HSM key",
			groupOperator, func(fs *flag.FlagSet, getenv func(string) string, f *drFlags) {
				f.conn.register(fs, getenv)
				f.tok.register(fs, getenv, false)
				fs.StringVar(&f.pool, "pool", "default", "keyworker pool whose HSM key signs the manifest")
				fs.StringVar(&f.dir, "out", "", "directory to write the backup to (created; must be empty)")
			}, runBackup),
		define("restore", "--from DIR --data NEW_NODE_DIR (--hsm-pin-file F | --pin-share S...)",
			"restore a backup into an empty node (after `hsm import-keys`): check manifest signature and hashes, restore every stream, continue the audit log",
			groupOperator, func(fs *flag.FlagSet, getenv func(string) string, f *drFlags) {
				f.conn.register(fs, getenv)
				f.tok.register(fs, getenv, false)
				fs.StringVar(&f.pool, "pool", "default", "keyworker pool whose HSM key signed the manifest")
				fs.StringVar(&f.dir, "from", "", "backup directory (from `sovkeys backup`)")
			}, runRestore),
	}
}

func issueDRCreds(_ context.Context, f *drCredFlags, s stdio) error {
	var perms natsauth.Permissions
	switch f.user {
	case shared.UserBackup:
		perms = natsauth.BackupPermissions([]string{f.pool})
	case shared.UserRestore:
		perms = natsauth.RestorePermissions()
	default:
		return fmt.Errorf("%w: --for backup or restore", shared.ErrConfigValidation)
	}
	if f.trust == "" || f.out == "" {
		return fmt.Errorf("%w: --trust and --out are required", shared.ErrConfigValidation)
	}
	if _, err := os.Stat(filepath.Join(f.trust, "operator.nk")); err != nil {
		return fmt.Errorf("%w: --trust %s holds no deployment trust: %v", shared.ErrConfigValidation, f.trust, err)
	}
	if _, err := os.Stat(f.out); err == nil {
		return fmt.Errorf("%w: --out %s exists; not overwritten", shared.ErrConfigValidation, f.out)
	}
	trust, err := natsauth.LoadOrCreate(f.trust)
	if err != nil {
		return err
	}
	if err := trust.WriteUserCreds(f.out, f.user, perms); err != nil {
		return err
	}
	fmt.Fprintf(s.stdout, "%s credential written to %s: delete it after use\n", f.user, f.out)
	return nil
}

// drConnect connects with a credential of user's: --creds, or one issued
// for this run from a standalone node's trust (--data), deleted after.
func drConnect(ctx context.Context, f *drFlags, user string, perms natsauth.Permissions, stderr io.Writer) (*nats.Conn, jetstream.JetStream, func(), error) {
	c := f.conn
	cleanup := func() {}
	if f.tok.data != "" && c.creds == "" {
		trustDir := filepath.Join(f.tok.data, "trust")
		if _, err := os.Stat(filepath.Join(trustDir, "operator.nk")); err != nil {
			return nil, nil, nil, fmt.Errorf("%w: --data %s holds no node trust: %v", shared.ErrConfigValidation, f.tok.data, err)
		}
		trust, err := natsauth.LoadOrCreate(trustDir)
		if err != nil {
			return nil, nil, nil, err
		}
		tmp, err := os.MkdirTemp("", "sovkeys-dr-")
		if err != nil {
			return nil, nil, nil, err
		}
		cleanup = func() { _ = os.RemoveAll(tmp) }
		c.creds = filepath.Join(tmp, user+".creds")
		if err := trust.WriteUserCreds(c.creds, user, perms); err != nil {
			cleanup()
			return nil, nil, nil, err
		}
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	nc, js, err := mesh.Connect(ctx, c.config("sovkeys-"+user), logger)
	if err != nil {
		cleanup()
		return nil, nil, nil, err
	}
	return nc, js, func() { nc.Close(); cleanup() }, nil
}

func runBackup(ctx context.Context, f *drFlags, s stdio) error {
	if f.dir == "" {
		return fmt.Errorf("%w: --out is required", shared.ErrConfigValidation)
	}
	if entries, err := os.ReadDir(f.dir); err == nil && len(entries) > 0 {
		return fmt.Errorf("%w: --out %s is not empty", shared.ErrConfigValidation, f.dir)
	}
	login, err := f.tok.login(false)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, drTimeout)
	defer cancel()
	start := time.Now()
	h, err := keyworker.OpenHSM(ctx, keyworker.HSMConfig{ModulePath: login.ModulePath, TokenLabel: login.TokenLabel, PIN: login.PIN, Sessions: 1}, nil)
	if err != nil {
		return err
	}
	defer h.Close()
	spki, err := h.PublicKey(ctx, keyworker.SigningKeyLabel)
	if err != nil {
		return fmt.Errorf("the pool's signing key: %w", err)
	}
	nc, js, closeConn, err := drConnect(ctx, f, shared.UserBackup, natsauth.BackupPermissions([]string{f.pool}), s.stderr)
	if err != nil {
		return err
	}
	defer closeConn()
	if err := os.MkdirAll(filepath.Join(f.dir, "streams"), 0o700); err != nil {
		return err
	}
	m := drManifest{Format: backupFormat, Created: start.UTC(), Pool: f.pool, ServerVersion: nc.ConnectedServerVersion(), SigningKey: spki}
	names := js.StreamNames(ctx)
	var streams []string
	for n := range names.Name() {
		streams = append(streams, n)
	}
	if err := names.Err(); err != nil {
		return fmt.Errorf("list streams: %w", err)
	}
	// The audit streams last: every change in the other streams then has
	// its audit record in the backup.
	orderAuditLast(streams)
	for _, name := range streams {
		st, err := js.Stream(ctx, name)
		if err != nil {
			return fmt.Errorf("stream %s: %w", name, err)
		}
		info := st.CachedInfo()
		if info.Config.Storage == jetstream.MemoryStorage {
			m.Skipped = append(m.Skipped, name) // queues and unseal shares: transient, recreated at start
			continue
		}
		ds, err := snapshotStream(ctx, nc, name, f.dir)
		if err != nil {
			return err
		}
		m.Streams = append(m.Streams, ds)
	}
	// A refused read (permissions) never answers: bound the wait.
	cctx, ccancel := context.WithTimeout(ctx, time.Minute)
	m.Checkpoints, err = newestCheckpoints(cctx, js)
	ccancel()
	if err != nil {
		return err
	}
	if m.Files, err = hashFiles(f.dir, m.Streams); err != nil {
		return err
	}
	m.TookMillis = time.Since(start).Milliseconds()
	body, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	sig, err := h.SignSHA256(ctx, keyworker.SigningKeyLabel, body)
	if err != nil {
		return fmt.Errorf("sign the manifest: %w", err)
	}
	if err := writeNew(filepath.Join(f.dir, manifestFile), body, 0o600); err != nil {
		return err
	}
	if err := writeNew(filepath.Join(f.dir, manifestSig), []byte(hex.EncodeToString(sig)+"\n"), 0o600); err != nil {
		return err
	}
	var total int64
	for _, fl := range m.Files {
		total += fl.Size
	}
	sum := sha256.Sum256(body)
	fmt.Fprintf(s.stdout, "backup %s: %d streams (%d bytes), %d audit checkpoints, in %s; manifest sha256 %s signed by pool %s\n",
		f.dir, len(m.Streams), total, len(m.Checkpoints), time.Duration(m.TookMillis)*time.Millisecond, hex.EncodeToString(sum[:]), f.pool)
	fmt.Fprintln(s.stdout, "keep the exported keys (`sovkeys hsm export-keys`) and their backup key apart from this directory")
	return nil
}

// orderAuditLast sorts the stream names, the audit event and log streams
// last (in that order).
func orderAuditLast(streams []string) {
	rank := func(n string) int {
		switch {
		case strings.HasPrefix(n, shared.StreamAuditLog):
			return 2
		case strings.HasPrefix(n, shared.StreamAudit):
			return 1
		}
		return 0
	}
	slices.SortFunc(streams, func(a, b string) int { return cmp.Or(cmp.Compare(rank(a), rank(b)), strings.Compare(a, b)) })
}

// snapshotReply is JetStream's answer to a snapshot request.
type snapshotReply struct {
	Config json.RawMessage `json:"config"`
	State  struct {
		Msgs    uint64 `json:"messages"`
		Bytes   uint64 `json:"bytes"`
		LastSeq uint64 `json:"last_seq"`
	} `json:"state"`
	Error *struct {
		Code        int    `json:"code"`
		Description string `json:"description"`
	} `json:"error"`
}

// snapshotStream asks the server for a snapshot of name (consumers
// included, checksums checked), acks each chunk for flow control, and
// writes the chunks and the server's config and state to dir/streams.
func snapshotStream(ctx context.Context, nc *nats.Conn, name, dir string) (drStream, error) {
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return drStream{}, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	_ = sub.SetPendingLimits(-1, -1)
	req, _ := json.Marshal(map[string]any{"deliver_subject": inbox, "chunk_size": snapshotChunk, "jsck": true})
	rctx, rcancel := context.WithTimeout(ctx, restoreAckWait)
	msg, err := nc.RequestWithContext(rctx, shared.JSStreamSnapshot+name, req)
	rcancel()
	if err != nil {
		return drStream{}, fmt.Errorf("snapshot %s: %w", name, err)
	}
	var rep snapshotReply
	if err := json.Unmarshal(msg.Data, &rep); err != nil {
		return drStream{}, fmt.Errorf("snapshot %s: %w", name, err)
	}
	if rep.Error != nil {
		return drStream{}, fmt.Errorf("snapshot %s: %s (%d)", name, rep.Error.Description, rep.Error.Code)
	}
	ds := drStream{Name: name, Messages: rep.State.Msgs, Bytes: rep.State.Bytes, LastSeq: rep.State.LastSeq,
		Snapshot: filepath.Join("streams", name+".tar.s2"), Meta: filepath.Join("streams", name+".json")}
	meta, _ := json.MarshalIndent(json.RawMessage(msg.Data), "", "  ")
	if err := writeNew(filepath.Join(dir, ds.Meta), meta, 0o600); err != nil {
		return drStream{}, err
	}
	out, err := os.OpenFile(filepath.Join(dir, ds.Snapshot), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return drStream{}, err
	}
	defer out.Close()
	for {
		cctx, cancel := context.WithTimeout(ctx, snapshotIdle)
		chunk, err := sub.NextMsgWithContext(cctx)
		cancel()
		if err != nil {
			return drStream{}, fmt.Errorf("snapshot %s: %w", name, err)
		}
		if len(chunk.Data) == 0 && chunk.Reply == "" {
			// The end: status 204 (or none) is success, others say why not.
			if st := chunk.Header.Get("Status"); st != "" && st != "204" {
				return drStream{}, fmt.Errorf("snapshot %s: server stopped it: %s %s", name, st, chunk.Header.Get("Description"))
			}
			return ds, out.Close()
		}
		if _, err := out.Write(chunk.Data); err != nil {
			return drStream{}, err
		}
		if chunk.Reply != "" {
			if err := nc.Publish(chunk.Reply, nil); err != nil {
				return drStream{}, err
			}
		}
	}
}

// newestCheckpoints reads the newest signed checkpoint (a signed tree
// head note) of every audit scope with records, from the audit export
// object store.
func newestCheckpoints(ctx context.Context, js jetstream.JetStream) ([]drCheckpoint, error) {
	st, err := js.Stream(ctx, shared.StreamAuditLog)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(shared.SubjectAuditRecordPrefix+">"))
	if err != nil {
		return nil, fmt.Errorf("audit scopes: %w", err)
	}
	var scopes []auditlog.Scope
	for subj := range info.State.Subjects {
		if sc, isCP, err := auditlog.ScopeOfSubject(subj); err == nil && !isCP {
			scopes = append(scopes, sc)
		}
	}
	slices.SortFunc(scopes, func(a, b auditlog.Scope) int { return strings.Compare(a.String(), b.String()) })
	if len(scopes) == 0 {
		return nil, nil
	}
	b, err := auditlog.OpenObjectBucket(ctx, js)
	if err != nil {
		return nil, err
	}
	var out []drCheckpoint
	for _, sc := range scopes {
		data, err := auditlog.LatestCheckpoint(ctx, b, sc)
		if errors.Is(err, auditlog.ErrNotFound) {
			continue // records not yet signed: the restore record says so
		}
		if err != nil {
			return nil, fmt.Errorf("checkpoint of %s: %w", sc, err)
		}
		sum := sha256.Sum256(data)
		out = append(out, drCheckpoint{Scope: sc.String(), SHA256: hex.EncodeToString(sum[:]), Body: data})
	}
	return out, nil
}

// hashFiles sizes and hashes every file of the streams.
func hashFiles(dir string, streams []drStream) ([]drFile, error) {
	var out []drFile
	for _, st := range streams {
		for _, p := range []string{st.Meta, st.Snapshot} {
			size, sum, err := hashFile(filepath.Join(dir, p))
			if err != nil {
				return nil, err
			}
			out = append(out, drFile{Path: p, Size: size, SHA256: sum})
		}
	}
	return out, nil
}

func hashFile(path string) (int64, string, error) {
	fh, err := os.Open(path)
	if err != nil {
		return 0, "", err
	}
	defer fh.Close()
	h := sha256.New()
	n, err := io.Copy(h, fh)
	if err != nil {
		return 0, "", err
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}
