// Package natsauth issues the NATS identities of a sovkeys deployment: an
// operator, a system account, one application account with JetStream, and a
// user JWT per service with its own subject permissions. The embedded server
// of `sovkeys standalone` trusts the operator; a production cluster uses the
// same kind of credentials made with nsc.
package natsauth

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/sovkeys/sovkeys/shared"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
)

// ErrAuth is wrapped by every error of this package.
var ErrAuth = errors.New("natsauth: failed")

// Trust holds the operator and account keys of one deployment. Seeds are
// infrastructure secrets: they live in files of mode 0600 under the data dir.
type Trust struct {
	operator nkeys.KeyPair
	system   nkeys.KeyPair
	account  nkeys.KeyPair

	operatorJWT string
	systemJWT   string
	accountJWT  string

	// dir holds the seeds and revoked.json (user public key -> revocation
	// time), which the application account's JWT carries.
	dir     string
	revoked map[string]int64

	// validity is the lifetime of the user JWTs issued from now on.
	validity time.Duration
}

// DefaultValidity is the lifetime of a user JWT unless told otherwise
// (`sovkeys cluster init --validity`): credentials are renewed when a third
// of it is left (NeedsRenewal), so a deployment that runs cluster init or
// restarts standalone at least monthly never sees one expire.
const DefaultValidity = 90 * 24 * time.Hour

// MinValidity is the shortest lifetime accepted for service credentials.
const MinValidity = time.Hour

// revokedFile lists the revoked users of the application account.
const revokedFile = "revoked.json"

// LoadOrCreate reads the trust seeds from dir, creating them on first use.
func LoadOrCreate(dir string) (*Trust, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrAuth, err)
	}
	op, err := loadOrCreateKey(filepath.Join(dir, "operator.nk"), nkeys.CreateOperator)
	if err != nil {
		return nil, err
	}
	sys, err := loadOrCreateKey(filepath.Join(dir, "system.nk"), nkeys.CreateAccount)
	if err != nil {
		return nil, err
	}
	acc, err := loadOrCreateKey(filepath.Join(dir, "account.nk"), nkeys.CreateAccount)
	if err != nil {
		return nil, err
	}
	t := &Trust{operator: op, system: sys, account: acc, dir: dir, revoked: map[string]int64{}, validity: DefaultValidity}
	if b, err := os.ReadFile(filepath.Join(dir, revokedFile)); err == nil {
		if err := json.Unmarshal(b, &t.revoked); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrAuth, revokedFile, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %v", ErrAuth, err)
	}
	if err := t.issueAccounts(); err != nil {
		return nil, err
	}
	return t, nil
}

func loadOrCreateKey(path string, create func() (nkeys.KeyPair, error)) (nkeys.KeyPair, error) {
	seed, err := os.ReadFile(path)
	if err == nil {
		kp, err := nkeys.FromSeed(seed)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrAuth, filepath.Base(path), err)
		}
		return kp, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %v", ErrAuth, err)
	}
	kp, err := create()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrAuth, err)
	}
	seed, err = kp.Seed()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrAuth, err)
	}
	if err := os.WriteFile(path, seed, 0o600); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrAuth, err)
	}
	return kp, nil
}

func (t *Trust) issueAccounts() error {
	opPub, _ := t.operator.PublicKey()
	sysPub, _ := t.system.PublicKey()
	accPub, _ := t.account.PublicKey()

	oc := jwt.NewOperatorClaims(opPub)
	oc.Name = "sovkeys"
	oc.SystemAccount = sysPub
	var err error
	if t.operatorJWT, err = oc.Encode(t.operator); err != nil {
		return fmt.Errorf("%w: operator jwt: %v", ErrAuth, err)
	}
	sc := jwt.NewAccountClaims(sysPub)
	sc.Name = "SYS"
	if t.systemJWT, err = sc.Encode(t.operator); err != nil {
		return fmt.Errorf("%w: system jwt: %v", ErrAuth, err)
	}
	ac := jwt.NewAccountClaims(accPub)
	ac.Name = shared.AccountName
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{
		MemoryStorage: jwt.NoLimit, DiskStorage: jwt.NoLimit,
		Streams: jwt.NoLimit, Consumer: jwt.NoLimit,
	}
	for pub, at := range t.revoked {
		ac.RevokeAt(pub, time.Unix(at, 0))
	}
	if t.accountJWT, err = ac.Encode(t.operator); err != nil {
		return fmt.Errorf("%w: account jwt: %v", ErrAuth, err)
	}
	return nil
}

// Configure makes opts trust this deployment's operator and accounts.
func (t *Trust) Configure(opts *server.Options) error {
	oc, err := jwt.DecodeOperatorClaims(t.operatorJWT)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrAuth, err)
	}
	sysPub, _ := t.system.PublicKey()
	accPub, _ := t.account.PublicKey()
	res := &server.MemAccResolver{}
	if err := res.Store(sysPub, t.systemJWT); err != nil {
		return fmt.Errorf("%w: %v", ErrAuth, err)
	}
	if err := res.Store(accPub, t.accountJWT); err != nil {
		return fmt.Errorf("%w: %v", ErrAuth, err)
	}
	opts.TrustedOperators = []*jwt.OperatorClaims{oc}
	opts.AccountResolver = res
	opts.SystemAccount = sysPub
	return nil
}

// Permissions lists the subjects a user may publish and subscribe. Empty
// allow lists mean no restriction; deny lists always apply. Respond lets the
// user answer requests it received (nats micro endpoints) without a
// publish grant on the requesters' inboxes.
type Permissions struct {
	Pub     []string
	Sub     []string
	DenyPub []string
	DenySub []string
	Respond bool
}

// Revoke adds user public key pub to the application account's revocation
// list (JWTs of that key issued up to now are refused by every server that
// loads the new account JWT, and its connections are closed: standalone at
// its next start, a cluster when `sovkeys cluster init` rewrote the node
// configs and the servers reloaded them, which `cluster init` asks of them
// over the system account; clusterinit.Reload).
func (t *Trust) Revoke(pub string, at time.Time) error {
	if !nkeys.IsValidPublicUserKey(pub) {
		return fmt.Errorf("%w: %q is not a user public key", ErrAuth, pub)
	}
	if _, ok := t.revoked[pub]; ok {
		return nil
	}
	t.revoked[pub] = at.Unix()
	b, err := json.MarshalIndent(t.revoked, "", "  ")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrAuth, err)
	}
	if err := os.WriteFile(filepath.Join(t.dir, revokedFile), b, 0o600); err != nil {
		return fmt.Errorf("%w: %v", ErrAuth, err)
	}
	return t.issueAccounts()
}

// Revoked reports whether user public key pub is revoked.
func (t *Trust) Revoked(pub string) bool { _, ok := t.revoked[pub]; return ok }

// SetValidity sets the lifetime of the user JWTs issued from now on
// (0: DefaultValidity).
func (t *Trust) SetValidity(d time.Duration) error {
	switch {
	case d == 0:
		d = DefaultValidity
	case d < MinValidity:
		return fmt.Errorf("%w: validity %s is shorter than %s", ErrAuth, d, MinValidity)
	}
	t.validity = d
	return nil
}

// Validity is the lifetime of the user JWTs this trust issues.
func (t *Trust) Validity() time.Duration { return t.validity }

// NeedsRenewal reports whether a user JWT expiring at exp (Unix seconds;
// 0: never, as every credential of releases before 2026-12-07) should be
// re-issued at now: it never expires, or less than a third of the trust's
// validity is left.
func (t *Trust) NeedsRenewal(exp int64, now time.Time) bool {
	return exp == 0 || time.Unix(exp, 0).Sub(now) < t.validity/3
}

// UserCreds issues a user of the application account and returns the
// contents of a standard NATS .creds file (user JWT + seed).
func (t *Trust) UserCreds(name string, perms Permissions) ([]byte, error) {
	creds, _, err := t.IssueUser(name, perms)
	return creds, err
}

// IssueUser issues a user of the application account: the contents of its
// .creds file and its public nkey (which a person's roster entry records).
func (t *Trust) IssueUser(name string, perms Permissions) ([]byte, string, error) {
	return t.IssueUserUntil(name, perms, time.Now().Add(t.validity))
}

// IssueUserUntil issues a user whose JWT expires at exp (zero: never; only
// tests and the upgrade tests, which play an earlier release, want that).
func (t *Trust) IssueUserUntil(name string, perms Permissions, exp time.Time) ([]byte, string, error) {
	creds, pub, err := t.issueUser(t.account, name, perms, exp)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %v", ErrAuth, err)
	}
	return creds, pub, nil
}

// SystemUserCreds issues a short-lived user of the system account with
// perms: the servers' own account, which may reload their configuration
// ($SYS.REQ.SERVER.<id>.RELOAD). Nothing writes it to disk.
func (t *Trust) SystemUserCreds(name string, perms Permissions, validity time.Duration) ([]byte, error) {
	creds, _, err := t.issueUser(t.system, name, perms, time.Now().Add(validity))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrAuth, err)
	}
	return creds, nil
}

func (t *Trust) issueUser(issuer nkeys.KeyPair, name string, perms Permissions, exp time.Time) ([]byte, string, error) {
	ukp, err := nkeys.CreateUser()
	if err != nil {
		return nil, "", err
	}
	upub, _ := ukp.PublicKey()
	uc := jwt.NewUserClaims(upub)
	uc.Name = name
	uc.IssuerAccount = ""
	uc.Permissions.Pub.Allow.Add(perms.Pub...)
	uc.Permissions.Sub.Allow.Add(perms.Sub...)
	uc.Permissions.Pub.Deny.Add(perms.DenyPub...)
	uc.Permissions.Sub.Deny.Add(perms.DenySub...)
	if perms.Respond {
		uc.Permissions.Resp = &jwt.ResponsePermission{MaxMsgs: 1, Expires: time.Minute}
	}
	if !exp.IsZero() {
		uc.Expires = exp.Unix()
	}
	ujwt, err := uc.Encode(issuer)
	if err != nil {
		return nil, "", fmt.Errorf("user jwt: %w", err)
	}
	seed, err := ukp.Seed()
	if err != nil {
		return nil, "", err
	}
	creds, err := jwt.FormatUserConfig(ujwt, seed)
	if err != nil {
		return nil, "", err
	}
	return creds, upub, nil
}

// WriteUserCreds issues a user and writes its creds file with mode 0600.
func (t *Trust) WriteUserCreds(path, name string, perms Permissions) error {
	creds, err := t.UserCreds(name, perms)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, creds, 0o600); err != nil {
		return fmt.Errorf("%w: %v", ErrAuth, err)
	}
	return nil
}

// Apply loads the application account's current JWT into the running
// server ns (`sovkeys standalone`'s embedded server; tests): revocations
// take effect at once and the connections of revoked users are closed.
func (t *Trust) Apply(ns *server.Server) error {
	pub, tok := t.AppAccountKey()
	ac, err := jwt.DecodeAccountClaims(tok)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrAuth, err)
	}
	if r := ns.AccountResolver(); r != nil {
		if err := r.Store(pub, tok); err != nil {
			return fmt.Errorf("%w: %v", ErrAuth, err)
		}
	}
	acc, err := ns.LookupAccount(pub)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrAuth, err)
	}
	ns.UpdateAccountClaims(acc, ac)
	return nil
}
