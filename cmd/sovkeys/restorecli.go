package main

// `sovkeys restore --from DIR --data NEW_NODE_DIR`: a backup into an empty
// node, after `sovkeys hsm import-keys` put the pool's keys in its token.
// Everything is checked before anything changes: the manifest's signature
// (by the imported signing key: keys of another deployment fail here),
// every file's size and SHA-256, and that the target holds no stream.
// The audit log then continues with an operator record naming the backup
// and the newest checkpoint of every scope before it.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
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

// APIRestore is the operator-log API of the restore record.
const APIRestore = "operator.restore"

// errRestoreRefused: restore checked and refused; nothing was changed.
var errRestoreRefused = errors.New("restore refused; nothing was changed")

// readManifest reads and checks a backup: signature under the token's
// signing key, then every file. It returns the manifest and its SHA-256.
func readManifest(ctx context.Context, dir string, login keyworker.TokenLogin) (drManifest, string, error) {
	var m drManifest
	body, err := os.ReadFile(filepath.Join(dir, manifestFile))
	if err != nil {
		return m, "", fmt.Errorf("%w: %w: %v", errRestoreRefused, shared.ErrConfigValidation, err)
	}
	sigHex, err := os.ReadFile(filepath.Join(dir, manifestSig))
	if err != nil {
		return m, "", fmt.Errorf("%w: %w: %v", errRestoreRefused, shared.ErrConfigValidation, err)
	}
	sig, err := hex.DecodeString(strings.TrimSpace(string(sigHex)))
	if err != nil {
		return m, "", fmt.Errorf("%w: %s is not hex", errRestoreRefused, manifestSig)
	}
	if err := json.Unmarshal(body, &m); err != nil || m.Format != backupFormat {
		return m, "", fmt.Errorf("%w: %s is not a %s manifest", errRestoreRefused, manifestFile, backupFormat)
	}
	h, err := keyworker.OpenHSM(ctx, keyworker.HSMConfig{ModulePath: login.ModulePath, TokenLabel: login.TokenLabel, PIN: login.PIN, Sessions: 1}, nil)
	if err != nil {
		return m, "", err
	}
	spki, err := h.PublicKey(ctx, keyworker.SigningKeyLabel)
	_ = h.Close()
	if err != nil {
		return m, "", fmt.Errorf("%w: the token has no signing key (run `sovkeys hsm import-keys` first): %w", errRestoreRefused, err)
	}
	if !bytes.Equal(spki, m.SigningKey) {
		return m, "", fmt.Errorf("%w: the backup was signed by another signing key than the token's: keys of another deployment, or not imported", errRestoreRefused)
	}
	pub, err := x509.ParsePKIXPublicKey(spki)
	ec, ok := pub.(*ecdsa.PublicKey)
	digest := sha256.Sum256(body)
	if err != nil || !ok || !ecdsa.VerifyASN1(ec, digest[:], sig) {
		return m, "", fmt.Errorf("%w: the manifest signature does not verify (altered manifest)", errRestoreRefused)
	}
	for _, f := range m.Files {
		if !filepath.IsLocal(f.Path) {
			return m, "", fmt.Errorf("%w: manifest names a file outside the backup: %q", errRestoreRefused, f.Path)
		}
		size, sum, err := hashFile(filepath.Join(dir, f.Path))
		if err != nil {
			return m, "", fmt.Errorf("%w: %v", errRestoreRefused, err)
		}
		if size != f.Size || sum != f.SHA256 {
			return m, "", fmt.Errorf("%w: %s does not match the manifest (size %d, sha256 %s; signed %d, %s)", errRestoreRefused, f.Path, size, sum, f.Size, f.SHA256)
		}
	}
	return m, hex.EncodeToString(digest[:]), nil
}

func runRestore(ctx context.Context, f *drFlags, s stdio) error {
	if f.dir == "" {
		return fmt.Errorf("%w: --from is required", shared.ErrConfigValidation)
	}
	if f.tok.data == "" && f.conn.creds == "" {
		return fmt.Errorf("%w: --data NEW_NODE_DIR (standalone) or --nats/--creds of a restore credential is required", shared.ErrConfigValidation)
	}
	login, err := f.tok.login(false)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, drTimeout)
	defer cancel()
	start := time.Now()
	m, manifestSum, err := readManifest(ctx, f.dir, login)
	if err != nil {
		return err
	}
	if f.tok.data != "" && f.conn.creds == "" {
		// A standalone node that is not running: serve its JetStream store
		// on a free loopback port for the restore only.
		sf := &standaloneFlags{dataDir: f.tok.data, natsListen: "127.0.0.1:-1"}
		for _, sub := range []string{"nats", "trust"} {
			if err := os.MkdirAll(filepath.Join(f.tok.data, sub), 0o700); err != nil {
				return err
			}
		}
		trust, err := natsauth.LoadOrCreate(filepath.Join(f.tok.data, "trust"))
		if err != nil {
			return err
		}
		ns, err := startNATS(sf, f.tok.data, trust)
		if err != nil {
			return err
		}
		defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
		f.conn.url = ns.ClientURL()
	}
	nc, js, closeConn, err := drConnect(ctx, f, shared.UserRestore, natsauth.RestorePermissions(), s.stderr)
	if err != nil {
		return err
	}
	defer closeConn()
	// A cluster that has just started has no JetStream meta leader yet and
	// answers nothing: wait for it (bounded) before looking.
	if err := waitJetStream(ctx, js); err != nil {
		return err
	}
	var existing []string
	lctx, lcancel := context.WithTimeout(ctx, restoreAckWait)
	names := js.StreamNames(lctx)
	for n := range names.Name() {
		existing = append(existing, n)
	}
	err = names.Err()
	lcancel()
	if err != nil {
		return fmt.Errorf("list streams: %w", err)
	}
	done, err := restoredBefore(ctx, js, m, existing)
	if err != nil {
		return err
	}
	var msgs uint64
	for _, st := range m.Streams {
		if !done[st.Name] {
			if err := restoreStream(ctx, nc, f.dir, st); err != nil {
				return fmt.Errorf("restore stream %s (streams restored before it stay; run the same restore again to go on): %w", st.Name, err)
			}
		}
		msgs += st.Messages
	}
	if len(done) > 0 {
		fmt.Fprintf(s.stdout, "%d streams were already restored by an earlier run of this restore; went on with the rest\n", len(done))
	}
	if err := auditRestore(ctx, js, m, manifestSum, f.dir); err != nil {
		return fmt.Errorf("streams restored, but the audit record of the restore failed: %w", err)
	}
	fmt.Fprintf(s.stdout, "restored %d streams (%d messages) from %s (manifest sha256 %s, backup of %s) in %s\n",
		len(m.Streams), msgs, f.dir, manifestSum, m.Created.Format(time.RFC3339), time.Since(start).Round(time.Millisecond))
	fmt.Fprintf(s.stdout, "events after %s that never reached the backup are not restored (recorded in the operator log)\n", m.Created.Format(time.RFC3339))
	return nil
}

// restoredBefore accepts a target whose only streams are some of this
// backup's, holding exactly what the manifest says (an earlier run of the
// same restore that stopped part way: JetStream creates a stream only when
// its whole snapshot is in); any other stream, or all of them, refuses the
// restore.
func restoredBefore(ctx context.Context, js jetstream.JetStream, m drManifest, existing []string) (map[string]bool, error) {
	want := map[string]drStream{}
	for _, st := range m.Streams {
		want[st.Name] = st
	}
	done := map[string]bool{}
	var foreign []string
	for _, name := range existing {
		st, ok := want[name]
		if ok {
			sctx, cancel := context.WithTimeout(ctx, restoreAckWait)
			str, err := js.Stream(sctx, name)
			cancel()
			if err != nil {
				return nil, fmt.Errorf("look at stream %s: %w", name, err)
			}
			state := str.CachedInfo().State
			ok = state.Msgs == st.Messages && state.LastSeq == st.LastSeq
		}
		if ok {
			done[name] = true
		} else {
			foreign = append(foreign, name)
		}
	}
	if len(foreign) > 0 {
		return nil, fmt.Errorf("%w: the target is not empty (streams %s): restore into a new node (fresh --data) or an empty cluster", errRestoreRefused, strings.Join(foreign, ", "))
	}
	if len(done) > 0 && len(done) == len(m.Streams) {
		return nil, fmt.Errorf("%w: the target is not empty: every stream of this backup is restored here already", errRestoreRefused)
	}
	return done, nil
}

// restoreStream sends one stream's snapshot to JetStream's restore API.
func restoreStream(ctx context.Context, nc *nats.Conn, dir string, st drStream) error {
	if !filepath.IsLocal(st.Meta) || !filepath.IsLocal(st.Snapshot) {
		return fmt.Errorf("%w: bad file names", errRestoreRefused)
	}
	meta, err := os.ReadFile(filepath.Join(dir, st.Meta))
	if err != nil {
		return err
	}
	var rep struct {
		Config json.RawMessage `json:"config"`
		State  json.RawMessage `json:"state"`
	}
	if err := json.Unmarshal(meta, &rep); err != nil {
		return err
	}
	req, _ := json.Marshal(map[string]json.RawMessage{"config": rep.Config, "state": rep.State})
	rctx, rcancel := context.WithTimeout(ctx, restoreAckWait)
	msg, err := nc.RequestWithContext(rctx, shared.JSStreamRestore+st.Name, req)
	rcancel()
	if err != nil {
		return err
	}
	var start struct {
		Deliver string `json:"deliver_subject"`
		Error   *struct {
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &start); err != nil {
		return err
	}
	if start.Error != nil {
		return fmt.Errorf("%s", start.Error.Description)
	}
	fh, err := os.Open(filepath.Join(dir, st.Snapshot))
	if err != nil {
		return err
	}
	defer fh.Close()
	buf := make([]byte, snapshotChunk)
	for {
		n, rerr := io.ReadFull(fh, buf)
		if n > 0 {
			cctx, cancel := context.WithTimeout(ctx, restoreAckWait)
			ack, err := nc.RequestWithContext(cctx, start.Deliver, buf[:n])
			cancel()
			if err != nil {
				return err
			}
			if len(ack.Data) > 0 {
				return fmt.Errorf("server refused a chunk: %s", ack.Data)
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	done, err := nc.RequestWithContext(cctx, start.Deliver, nil)
	if err != nil {
		return err
	}
	var res struct {
		Error *struct {
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(done.Data, &res); err != nil {
		return err
	}
	if res.Error != nil {
		return fmt.Errorf("%s", res.Error.Description)
	}
	return nil
}

// auditRestore writes the operator record that continues the audit log
// after the restore: the backup's manifest hash, its time (events after it
// are the gap the restore cannot fill) and the newest checkpoint of every
// scope it holds. The audit service chains and signs it like any record.
func auditRestore(ctx context.Context, js jetstream.JetStream, m drManifest, manifestSum, dir string) error {
	p := map[string]string{
		"manifest_sha256": manifestSum,
		"backup_created":  m.Created.Format(time.RFC3339Nano),
		"backup_dir":      filepath.Base(dir),
		"gap":             "events after backup_created that never reached the backup are not restored",
		"checkpoints":     strconv.Itoa(len(m.Checkpoints)),
	}
	for i, c := range m.Checkpoints {
		size := "?"
		if text, _, ok := strings.Cut(string(c.Body), "\n\n"); ok {
			if th, err := auditlog.ParseTreeHead([]byte(text + "\n")); err == nil {
				size = strconv.FormatInt(th.Size, 10)
			}
		}
		p["checkpoint."+strconv.Itoa(i)] = c.Scope + " size " + size + " sha256 " + c.SHA256
	}
	now := time.Now()
	ev := &shared.AuditEvent{
		RequestID: "restore-" + manifestSum[:32], Kind: shared.AuditKindOperator, Scope: "",
		API: shared.API(APIRestore), Service: shared.AuditServicePerson(shared.UserRestore), Start: now, End: now,
		CallerType: shared.CallerTypePerson, CallerID: shared.UserRestore, Result: shared.ResultSuccess, Params: p,
	}
	return mesh.PublishAudit(ctx, js, ev)
}

// waitJetStream waits up to jsReadyWait for JetStream to answer.
func waitJetStream(ctx context.Context, js jetstream.JetStream) error {
	deadline := time.Now().Add(jsReadyWait)
	for {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := js.AccountInfo(actx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("jetstream not ready after %s: %w", jsReadyWait, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}
