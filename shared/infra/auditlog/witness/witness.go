// Package witness is a C2SP tlog-witness (https://c2sp.org/tlog-witness)
// for the audit transparency logs: it cosigns a checkpoint
// (cosignature/v1, Ed25519) only after checking that it is signed by the
// log's audit key and consistent with the last checkpoint it cosigned for
// that log, whose size and root it keeps on disk, replaced atomically.
// Clients (the audit service) add its cosignature to the checkpoints they
// publish; verifiers that require k cosignatures then know k independent
// parties saw one append-only history.
package witness

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
)

// Config configures a witness.
type Config struct {
	Name       string // cosigner name, a schema-less URL (witness.example/w1)
	Key        ed25519.PrivateKey
	Deployment string           // the logs witnessed: every scope of this deployment
	LogKey     *ecdsa.PublicKey // their audit key
	StateDir   string           // one file per log
}

// Validate checks the configuration.
func (c Config) Validate() error {
	bad := func(what string) error { return fmt.Errorf("%w: witness: %s", shared.ErrConfigValidation, what) }
	switch {
	case c.Name == "" || strings.ContainsAny(c.Name, " +\n"):
		return bad("name must be non-empty without spaces or '+'")
	case len(c.Key) != ed25519.PrivateKeySize:
		return bad("key must be an Ed25519 private key")
	case !auditlog.ValidDeployment(c.Deployment):
		return bad("deployment")
	case c.LogKey == nil:
		return bad("log key missing")
	case c.StateDir == "":
		return bad("state directory missing")
	}
	return nil
}

// Witness checks and cosigns checkpoints.
type Witness struct {
	cfg    Config
	log    *slog.Logger
	signer *auditlog.Cosigner
	logV   note.Verifier

	mu sync.Mutex // check-and-persist is atomic (C2SP tlog-witness)
}

// New builds a witness; it creates the state directory.
func New(cfg Config, logger *slog.Logger, now func() time.Time) (*Witness, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("witness: state: %w", err)
	}
	v, err := auditlog.NewECDSAVerifier(auditlog.KeyName(cfg.Deployment), cfg.LogKey)
	if err != nil {
		return nil, err
	}
	return &Witness{cfg: cfg, log: logger, signer: auditlog.NewCosigner(cfg.Name, cfg.Key, now), logV: v}, nil
}

// VKey is the witness's public key as verifiers configure it.
func (w *Witness) VKey() string {
	return auditlog.CosignerVKey(w.cfg.Name, w.cfg.Key.Public().(ed25519.PublicKey))
}

// Errors of AddCheckpoint, mapped to the C2SP status codes.
var (
	ErrUnknownLog = errors.New("witness: unknown log")                  // 404
	ErrForbidden  = errors.New("witness: checkpoint signature invalid") // 403
	ErrMalformed  = errors.New("witness: malformed request")            // 400
)

// ConflictError: the old size is not the size last cosigned (409).
type ConflictError struct{ Size int64 }

func (e *ConflictError) Error() string {
	return fmt.Sprintf("witness: the last cosigned size is %d", e.Size)
}

type state struct {
	Origin string `json:"origin"`
	Size   int64  `json:"size"`
	Root   []byte `json:"root"`
}

func (w *Witness) statePath(origin string) string {
	sum := sha256.Sum256([]byte(origin))
	return filepath.Join(w.cfg.StateDir, hex.EncodeToString(sum[:])+".json")
}

func (w *Witness) load(origin string) (state, error) {
	data, err := os.ReadFile(w.statePath(origin))
	if errors.Is(err, os.ErrNotExist) {
		return state{Origin: origin}, nil
	}
	if err != nil {
		return state{}, fmt.Errorf("witness: state: %w", err)
	}
	var st state
	if err := json.Unmarshal(data, &st); err != nil || st.Origin != origin || len(st.Root) != tlog.HashSize {
		return state{}, fmt.Errorf("witness: state of %s is unreadable", origin)
	}
	return st, nil
}

// save replaces the state file atomically: write a temporary file, fsync,
// rename over, fsync the directory.
func (w *Witness) save(st state) error {
	data, err := json.Marshal(st)
	if err != nil {
		return err
	}
	path := w.statePath(st.Origin)
	tmp, err := os.CreateTemp(w.cfg.StateDir, ".state-*")
	if err != nil {
		return fmt.Errorf("witness: state: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("witness: state: %w", err)
	}
	if d, err := os.Open(w.cfg.StateDir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}

// AddCheckpoint checks checkpoint (a signed note) against the last one
// cosigned for its origin, given the client's old size and a consistency
// proof, persists it, and returns the cosignature lines.
func (w *Witness) AddCheckpoint(ctx context.Context, oldSize int64, proof [][]byte, checkpoint []byte) ([]byte, error) {
	if dep, _, err := auditlog.ScopeOfOrigin(firstLine(checkpoint)); err != nil || dep != w.cfg.Deployment {
		return nil, ErrUnknownLog
	}
	n, err := note.Open(checkpoint, note.VerifierList(w.logV))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrForbidden, err)
	}
	th, err := auditlog.ParseTreeHead([]byte(n.Text))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if dep, _, err := auditlog.ScopeOfOrigin(th.Origin); err != nil || dep != w.cfg.Deployment {
		return nil, ErrUnknownLog
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	st, err := w.load(th.Origin)
	if err != nil {
		return nil, err
	}
	var lastRoot tlog.Hash
	copy(lastRoot[:], st.Root)
	err = auditlog.CheckAdvance(st.Size, lastRoot, oldSize, proof, th.Size, th.Root)
	switch {
	case errors.Is(err, auditlog.ErrOldSize):
		return nil, &ConflictError{Size: st.Size}
	case errors.Is(err, auditlog.ErrBadRequest):
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	case err != nil:
		w.log.Error("refusing an inconsistent checkpoint", "origin", th.Origin, "size", th.Size, "cosigned_size", st.Size, "err", err)
		return nil, err
	}
	if th.Size > st.Size {
		if err := w.save(state{Origin: th.Origin, Size: th.Size, Root: th.Root[:]}); err != nil {
			return nil, err
		}
	}
	signed, err := note.Sign(&note.Note{Text: n.Text}, w.signer)
	if err != nil {
		return nil, err
	}
	return signed[len(n.Text)+1:], nil // the signature line after the blank line
}

func firstLine(b []byte) string {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	return string(line)
}

// Handler serves POST /add-checkpoint.
func (w *Witness) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /add-checkpoint", w.serveAdd)
	return mux
}

// maxBody bounds a request: 63 proof lines, a checkpoint with signatures.
const maxBody = 64 << 10

func (w *Witness) serveAdd(rw http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil || len(body) > maxBody {
		http.Error(rw, "request too large", http.StatusBadRequest)
		return
	}
	oldSize, proof, cp, err := ParseAddCheckpoint(body)
	if err != nil {
		http.Error(rw, err.Error(), http.StatusBadRequest)
		return
	}
	sigs, err := w.AddCheckpoint(r.Context(), oldSize, proof, cp)
	var conflict *ConflictError
	switch {
	case err == nil:
		rw.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = rw.Write(sigs)
	case errors.As(err, &conflict):
		rw.Header().Set("Content-Type", "text/x.tlog.size")
		rw.WriteHeader(http.StatusConflict)
		_, _ = fmt.Fprintf(rw, "%d\n", conflict.Size)
	case errors.Is(err, ErrUnknownLog):
		http.Error(rw, err.Error(), http.StatusNotFound)
	case errors.Is(err, ErrForbidden):
		http.Error(rw, err.Error(), http.StatusForbidden)
	case errors.Is(err, ErrMalformed):
		http.Error(rw, err.Error(), http.StatusBadRequest)
	case errors.Is(err, auditlog.ErrInconsistent):
		if strings.Contains(err.Error(), "another root") {
			http.Error(rw, err.Error(), http.StatusConflict)
			return
		}
		http.Error(rw, err.Error(), http.StatusUnprocessableEntity)
	default:
		w.log.Error("add-checkpoint", "err", err)
		http.Error(rw, "internal error", http.StatusInternalServerError)
	}
}

// FormatAddCheckpoint is the request body of add-checkpoint.
func FormatAddCheckpoint(oldSize int64, proof [][]byte, checkpoint []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "old %d\n", oldSize)
	for _, h := range proof {
		b.WriteString(base64.StdEncoding.EncodeToString(h) + "\n")
	}
	b.WriteString("\n")
	b.Write(checkpoint)
	return b.Bytes()
}

// ParseAddCheckpoint reads an add-checkpoint request body.
func ParseAddCheckpoint(body []byte) (oldSize int64, proof [][]byte, checkpoint []byte, err error) {
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 0, 4096), maxBody)
	consumed := 0
	line := func() (string, bool) {
		if !sc.Scan() {
			return "", false
		}
		consumed += len(sc.Bytes()) + 1
		return sc.Text(), true
	}
	first, ok := line()
	rest, found := strings.CutPrefix(first, "old ")
	if !ok || !found {
		return 0, nil, nil, fmt.Errorf("%w: want an old size line", ErrMalformed)
	}
	oldSize, err = strconv.ParseInt(rest, 10, 64)
	if err != nil || oldSize < 0 || strconv.FormatInt(oldSize, 10) != rest {
		return 0, nil, nil, fmt.Errorf("%w: old size %q", ErrMalformed, rest)
	}
	for {
		l, ok := line()
		if !ok {
			return 0, nil, nil, fmt.Errorf("%w: no checkpoint", ErrMalformed)
		}
		if l == "" {
			break
		}
		h, err := base64.StdEncoding.DecodeString(l)
		if err != nil || len(h) != tlog.HashSize || len(proof) == auditlog.MaxProofHashes {
			return 0, nil, nil, fmt.Errorf("%w: proof line %q", ErrMalformed, l)
		}
		proof = append(proof, h)
	}
	if consumed > len(body) {
		return 0, nil, nil, fmt.Errorf("%w: no checkpoint", ErrMalformed)
	}
	return oldSize, proof, body[consumed:], nil
}
