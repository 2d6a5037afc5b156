package main

// `sovkeys hsm check|export-keys|import-keys`: the token's mechanisms, and
// key material leaving the HSM only wrapped (docs/operations.md,
// "Disaster recovery"; docs/hsm.md, "Mechanisms").

import (
	"bytes"
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sovkeys/sovkeys/services/keyworker"
	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/crypto/shamir"
	"github.com/sovkeys/sovkeys/shared/infra/unseal"
)

// keyExportFormat names the wrapped-keys file format.
const keyExportFormat = "sovkeys-key-export/v1"

// backupKeyPEM is the PEM type of a backup key file.
const backupKeyPEM = "SOVKEYS BACKUP KEY"

// backupSharePrefix starts a backup-key share line.
const backupSharePrefix = "sovkeys-backup-share:v1:"

// tokenFlags select a token and how to log in to it.
type tokenFlags struct {
	module, label, pinFile, soPINFile, profile, data string
	pinShares                                        listFlag
}

func (t *tokenFlags) register(fs *flag.FlagSet, getenv func(string) string, so bool) {
	fs.StringVar(&t.module, "hsm-module", getenv("SOVKEYS_HSM_MODULE"), "PKCS#11 module path (env SOVKEYS_HSM_MODULE; default: SoftHSMv2)")
	fs.StringVar(&t.label, "hsm-token-label", envOr(getenv, "SOVKEYS_HSM_TOKEN_LABEL", standaloneTokenLabel), "token, found by label")
	fs.StringVar(&t.pinFile, "hsm-pin-file", "", "file holding the user PIN (else --pin-share)")
	fs.Var(&t.pinShares, "pin-share", "an unseal share of the user PIN (repeatable; the threshold of them)")
	fs.StringVar(&t.data, "data", "", "a standalone node's data directory: its SoftHSM token (sets SOFTHSM2_CONF)")
	fs.StringVar(&t.profile, "hsm-profile", "", "HSM family (docs/hsm.md)")
	if so {
		fs.StringVar(&t.soPINFile, "hsm-so-pin-file", "", "file holding the security officer's PIN (marks the backup key CKA_TRUSTED for this session)")
	}
}

// resolve fills in the module and the SoftHSM configuration of --data.
func (t *tokenFlags) resolve() error {
	if t.data != "" {
		conf := filepath.Join(t.data, "hsm", "softhsm2.conf")
		if _, err := os.Stat(conf); err != nil {
			return fmt.Errorf("%w: --data: no SoftHSM token configuration: %v", shared.ErrConfigValidation, err)
		}
		// SoftHSM reads it once, at C_Initialize, which is yet to come.
		if err := os.Setenv("SOFTHSM2_CONF", conf); err != nil {
			return err
		}
	}
	if t.module == "" {
		m, err := keyworker.FindSoftHSMModule()
		if err != nil {
			return fmt.Errorf("%w: --hsm-module: %v", shared.ErrConfigValidation, err)
		}
		t.module = m
	}
	return nil
}

func (t *tokenFlags) login(so bool) (keyworker.TokenLogin, error) {
	if err := t.resolve(); err != nil {
		return keyworker.TokenLogin{}, err
	}
	pin, err := readTokenPIN(t.pinFile, t.pinShares)
	if err != nil {
		return keyworker.TokenLogin{}, err
	}
	l := keyworker.TokenLogin{ModulePath: t.module, TokenLabel: t.label, PIN: pin}
	if so {
		if t.soPINFile == "" {
			return l, fmt.Errorf("%w: --hsm-so-pin-file is required: only the security officer can mark the backup key trusted", shared.ErrConfigValidation)
		}
		if l.SOPIN, err = readSecretFile(t.soPINFile); err != nil {
			return l, err
		}
	}
	return l, nil
}

// readTokenPIN reads the user PIN from a file or rebuilds it from unseal shares.
func readTokenPIN(file string, shares []string) (string, error) {
	switch {
	case file != "" && len(shares) > 0:
		return "", fmt.Errorf("%w: give --hsm-pin-file or --pin-share, not both", shared.ErrConfigValidation)
	case file != "":
		return readSecretFile(file)
	case len(shares) > 0:
		var parts []unseal.Share
		for _, l := range shares {
			s, err := unseal.Parse(strings.TrimSpace(l))
			if err != nil {
				return "", fmt.Errorf("%w: --pin-share: %v", shared.ErrConfigValidation, err)
			}
			parts = append(parts, s)
		}
		pin, err := unseal.Combine(parts)
		if err != nil {
			return "", fmt.Errorf("%w: --pin-share: %v", shared.ErrConfigValidation, err)
		}
		return string(pin), nil
	}
	return "", fmt.Errorf("%w: the HSM user PIN is needed: --hsm-pin-file or --pin-share", shared.ErrConfigValidation)
}

func readSecretFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%w: %v", shared.ErrConfigValidation, err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("%w: %s is empty", shared.ErrConfigValidation, path)
	}
	return s, nil
}

type hsmCheckFlags struct {
	tok    tokenFlags
	slot   int
	asJSON bool
}

type exportKeysFlags struct {
	tok       tokenFlags
	pool, out string
	to        string
	n, k      int
}

type importKeysFlags struct {
	tok          tokenFlags
	pool, from   string
	backupKey    string
	backupShares listFlag
}

func hsmCommands() []command {
	return []command{
		define("hsm check", "--hsm-module SO [--hsm-token-label L | --slot N] [--json]",
			"print the PKCS#11 mechanisms sovkeys needs, what needs each and whether the token has it (nothing is started; exit 1 when one is missing)",
			groupOperator, func(fs *flag.FlagSet, getenv func(string) string, f *hsmCheckFlags) {
				f.tok.register(fs, getenv, false)
				fs.IntVar(&f.slot, "slot", -1, "check this slot instead of a token found by label (an uninitialised token)")
				fs.BoolVar(&f.asJSON, "json", false, "print JSON")
			}, hsmCheck),
		define("hsm export-keys", "--pool P --out keys.json (--to backup-key.pem | --shares N --threshold K) --hsm-so-pin-file F (--hsm-pin-file F | --pin-share S...)",
			"export every key of the pool's token wrapped (RFC 5649) under a backup key held in a file or split among custodians; list keys to clone with vendor tools",
			groupOperator, func(fs *flag.FlagSet, getenv func(string) string, f *exportKeysFlags) {
				f.tok.register(fs, getenv, true)
				fs.StringVar(&f.pool, "pool", "default", "keyworker pool the token serves")
				fs.StringVar(&f.out, "out", "", "file to write the wrapped keys to (created; never beside the data backup)")
				fs.StringVar(&f.to, "to", "", "backup key file: used when it exists, else made (PEM, mode 0600; keep it on a second token or offline)")
				fs.IntVar(&f.n, "shares", 0, "instead of --to: make a new backup key and print N shares of it, one per custodian")
				fs.IntVar(&f.k, "threshold", 0, "shares needed to rebuild the backup key (with --shares)")
			}, hsmExportKeys),
		define("hsm import-keys", "--pool P --from keys.json (--backup-key backup-key.pem | --backup-share S...) (--hsm-pin-file F | --pin-share S...)",
			"unwrap exported keys into a new, empty token with the same labels and attributes (before `sovkeys restore`)",
			groupOperator, func(fs *flag.FlagSet, getenv func(string) string, f *importKeysFlags) {
				f.tok.register(fs, getenv, false)
				fs.StringVar(&f.pool, "pool", "default", "keyworker pool the token serves")
				fs.StringVar(&f.from, "from", "", "wrapped keys file (from export-keys)")
				fs.StringVar(&f.backupKey, "backup-key", "", "backup key file")
				fs.Var(&f.backupShares, "backup-share", "a share of the backup key (repeatable; the threshold of them)")
			}, hsmImportKeys),
	}
}

func hsmCheck(_ context.Context, f *hsmCheckFlags, s stdio) error {
	if err := f.tok.resolve(); err != nil {
		return err
	}
	label, slot := f.tok.label, uint(0)
	if f.slot >= 0 {
		label, slot = "", uint(f.slot)
	}
	r, err := keyworker.InspectToken(f.tok.module, label, slot, f.tok.profile)
	if err != nil {
		return err
	}
	if f.asJSON {
		enc := json.NewEncoder(s.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(s.stdout, 2, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "MECHANISM\tFLAGS\tSTATUS\tUSED BY")
		for _, row := range r.Rows {
			status := row.Status
			if row.Fallback != "" {
				status = "ok (fallback " + row.Fallback + ")"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", row.Mechanism, row.Flags, status, row.UsedBy)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return r.Err(cmp.Or(label, "slot "+strconv.Itoa(f.slot)))
}

// keyExportFile is the wrapped-keys file: the export, bound to its pool
// and backup key, and MACed under the backup key so no label, attribute or
// key can be swapped without import noticing.
type keyExportFile struct {
	Format      string              `json:"format"`
	Pool        string              `json:"pool"`
	Created     time.Time           `json:"created"`
	TokenLabel  string              `json:"token_label"`
	BackupKeyID string              `json:"backup_key_id"`
	Export      keyworker.KeyExport `json:"export"`
	MAC         string              `json:"mac,omitempty"`
}

func backupKeyID(key []byte) string {
	sum := sha256.Sum256(append([]byte("sovkeys/backup-key-id/v1\x00"), key...))
	return hex.EncodeToString(sum[:8])
}

func (f *keyExportFile) mac(key []byte) (string, error) {
	c := *f
	c.MAC = ""
	body, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	mk := sha256.Sum256(append([]byte("sovkeys/key-export-mac/v1\x00"), key...))
	m := hmac.New(sha256.New, mk[:])
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil)), nil
}

func hsmExportKeys(ctx context.Context, f *exportKeysFlags, s stdio) error {
	if f.out == "" {
		return fmt.Errorf("%w: --out is required", shared.ErrConfigValidation)
	}
	if (f.to == "") == (f.n == 0) {
		return fmt.Errorf("%w: give --to FILE or --shares N --threshold K", shared.ErrConfigValidation)
	}
	if f.n != 0 && (f.k < 2 || f.k > f.n || f.n > 255) {
		return fmt.Errorf("%w: need 2 <= --threshold <= --shares <= 255", shared.ErrConfigValidation)
	}
	if _, err := os.Stat(f.out); err == nil {
		return fmt.Errorf("%w: --out %s exists; not overwritten", shared.ErrConfigValidation, f.out)
	}
	login, err := f.tok.login(true)
	if err != nil {
		return err
	}
	var key []byte
	var newKeyFile bool
	if f.to != "" {
		if key, err = readBackupKey(f.to); errors.Is(err, os.ErrNotExist) {
			key, newKeyFile = make([]byte, keyworker.BackupKeySize), true
			_, _ = rand.Read(key)
		} else if err != nil {
			return err
		}
	} else {
		key = make([]byte, keyworker.BackupKeySize)
		_, _ = rand.Read(key)
	}
	if newKeyFile {
		// The key is on disk before anything is wrapped under it; a failed
		// export removes it again.
		pemBytes := pem.EncodeToMemory(&pem.Block{Type: backupKeyPEM, Headers: map[string]string{"Key-Id": backupKeyID(key)}, Bytes: key})
		if err := writeNew(f.to, pemBytes, 0o600); err != nil {
			return err
		}
	}
	exp, err := keyworker.ExportKeys(ctx, login, key)
	if err != nil {
		if newKeyFile {
			_ = os.Remove(f.to)
		}
		return err
	}
	file := keyExportFile{Format: keyExportFormat, Pool: f.pool, Created: time.Now().UTC(), TokenLabel: login.TokenLabel,
		BackupKeyID: backupKeyID(key), Export: exp}
	if file.MAC, err = file.mac(key); err != nil {
		return err
	}
	body, err := json.MarshalIndent(file, "", "  ")
	if err != nil {
		return err
	}
	if err := writeNew(f.out, body, 0o600); err != nil {
		if newKeyFile {
			_ = os.Remove(f.to)
		}
		return err
	}
	fmt.Fprintf(s.stdout, "exported %d keys of token %q (pool %s) wrapped with %s under backup key %s to %s\n",
		len(exp.Keys), login.TokenLabel, f.pool, exp.Mechanism, file.BackupKeyID, f.out)
	if newKeyFile {
		fmt.Fprintf(s.stdout, "new backup key written to %s: keep it apart from the data backup and from %s\n", f.to, f.out)
	}
	if f.n > 0 {
		parts, err := shamir.Split(key, f.n, f.k)
		if err != nil {
			return err
		}
		fmt.Fprintf(s.stdout, "backup key shares: %d of %d rebuild it. Shown ONCE; give them to different custodians:\n", f.k, f.n)
		for _, p := range parts {
			fmt.Fprintf(s.stdout, "  %s%s:%d:%d:%s\n", backupSharePrefix, file.BackupKeyID, f.k, p.X, hex.EncodeToString(p.Y))
		}
	}
	for _, l := range exp.CloneWithVendorTools {
		fmt.Fprintf(s.stdout, "NOT EXPORTED (the token will not wrap it: made before backups existed, or a key type it cannot wrap): %s: clone it with the HSM vendor's tools\n", l)
	}
	return nil
}

// writeNew writes a file that must not exist yet.
func writeNew(path string, data []byte, mode os.FileMode) error {
	fh, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := fh.Write(data); err != nil {
		_ = fh.Close()
		return err
	}
	return fh.Close()
}

func readBackupKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != backupKeyPEM || len(blk.Bytes) != keyworker.BackupKeySize {
		return nil, fmt.Errorf("%w: %s is not a sovkeys backup key", shared.ErrConfigValidation, path)
	}
	return blk.Bytes, nil
}

// combineBackupShares rebuilds the backup key from share lines; fewer than
// the threshold, shares of different keys, or a wrong result (its id is
// checked against the shares' own) are refused.
func combineBackupShares(lines []string) ([]byte, error) {
	var parts []shamir.Share
	var id string
	k := 0
	for _, l := range lines {
		f := strings.Split(strings.TrimPrefix(strings.TrimSpace(l), backupSharePrefix), ":")
		if !strings.HasPrefix(strings.TrimSpace(l), backupSharePrefix) || len(f) != 4 {
			return nil, fmt.Errorf("%w: --backup-share: not a sovkeys backup-key share", shared.ErrConfigValidation)
		}
		kk, err1 := strconv.Atoi(f[1])
		x, err2 := strconv.Atoi(f[2])
		y, err3 := hex.DecodeString(f[3])
		if err := errors.Join(err1, err2, err3); err != nil || x < 1 || x > 255 {
			return nil, fmt.Errorf("%w: --backup-share: malformed share", shared.ErrConfigValidation)
		}
		if id != "" && (f[0] != id || kk != k) {
			return nil, fmt.Errorf("%w: --backup-share: shares of different backup keys", shared.ErrConfigValidation)
		}
		id, k = f[0], kk
		parts = append(parts, shamir.Share{X: byte(x), Y: y})
	}
	if len(parts) < k || len(parts) < 2 {
		return nil, fmt.Errorf("%w: --backup-share: %d shares given, %d needed", shared.ErrConfigValidation, len(parts), max(k, 2))
	}
	key, err := shamir.Combine(parts)
	if err != nil {
		return nil, fmt.Errorf("%w: --backup-share: %v", shared.ErrConfigValidation, err)
	}
	if backupKeyID(key) != id {
		return nil, fmt.Errorf("%w: --backup-share: the shares do not rebuild backup key %s (a wrong or altered share)", shared.ErrConfigValidation, id)
	}
	return key, nil
}

// readKeyExport reads and checks a wrapped-keys file under key.
func readKeyExport(path, pool string, key []byte) (keyExportFile, error) {
	var file keyExportFile
	b, err := os.ReadFile(path)
	if err != nil {
		return file, fmt.Errorf("%w: --from: %v", shared.ErrConfigValidation, err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&file); err != nil || file.Format != keyExportFormat {
		return file, fmt.Errorf("%w: %s is not a sovkeys key export", shared.ErrConfigValidation, path)
	}
	if file.BackupKeyID != backupKeyID(key) {
		return file, fmt.Errorf("%w: %s was wrapped under backup key %s, not the one given (%s)", shared.ErrConfigValidation, path, file.BackupKeyID, backupKeyID(key))
	}
	want, err := file.mac(key)
	if err != nil || !hmac.Equal([]byte(want), []byte(file.MAC)) {
		return file, fmt.Errorf("%w: %s has been altered (MAC does not match)", shared.ErrConfigValidation, path)
	}
	if file.Pool != pool {
		return file, fmt.Errorf("%w: %s holds the keys of pool %q, not %q (another deployment's keys?)", shared.ErrConfigValidation, path, file.Pool, pool)
	}
	return file, nil
}

func hsmImportKeys(ctx context.Context, f *importKeysFlags, s stdio) error {
	if f.from == "" {
		return fmt.Errorf("%w: --from is required", shared.ErrConfigValidation)
	}
	var key []byte
	var err error
	switch {
	case f.backupKey != "" && len(f.backupShares) > 0:
		return fmt.Errorf("%w: give --backup-key or --backup-share, not both", shared.ErrConfigValidation)
	case f.backupKey != "":
		if key, err = readBackupKey(f.backupKey); err != nil {
			return fmt.Errorf("%w: --backup-key: %v", shared.ErrConfigValidation, err)
		}
	case len(f.backupShares) > 0:
		if key, err = combineBackupShares(f.backupShares); err != nil {
			return err
		}
	default:
		return fmt.Errorf("%w: --backup-key or --backup-share is required", shared.ErrConfigValidation)
	}
	file, err := readKeyExport(f.from, f.pool, key)
	if err != nil {
		return err
	}
	login, err := f.tok.login(false)
	if err != nil {
		return err
	}
	n, err := keyworker.ImportKeys(ctx, login, key, file.Export)
	if err != nil {
		return err
	}
	fmt.Fprintf(s.stdout, "imported %d keys into token %q (pool %s, exported %s from token %q)\n",
		n, login.TokenLabel, f.pool, file.Created.Format(time.RFC3339), file.TokenLabel)
	return nil
}
