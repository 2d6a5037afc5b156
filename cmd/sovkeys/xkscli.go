package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/api/xks"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
)

// operator is a connected operator CLI session.
type operator struct {
	getenv func(string) string
	nc     *nats.Conn
	js     jetstream.JetStream
	topo   mesh.Topology
	reg    *registry.Registry
	out    io.Writer
}

func (o *operator) print(v any) error {
	enc := json.NewEncoder(o.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// withOperator parses the common flags, connects, and runs fn.
func withOperator(ctx context.Context, name string, args []string, getenv func(string) string, stdout, stderr io.Writer,
	define func(fs *flag.FlagSet), fn func(ctx context.Context, o *operator) error) error {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var conn connFlags
	var topo topologyFlags
	conn.register(fs, getenv)
	topo.register(fs)
	define(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: %w", fs.Arg(0), errUsage)
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	nc, js, err := mesh.Connect(ctx, conn.config("sovkeys-cli"), logger)
	if err != nil {
		return err
	}
	defer nc.Close()
	reg, err := registry.Open(ctx, js, topo.t)
	if err != nil {
		return err
	}
	return fn(ctx, &operator{getenv: getenv, nc: nc, js: js, topo: topo.t, reg: reg, out: stdout})
}

func runXKS(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) < 2 {
		return errUsage
	}
	cmd := args[0] + " " + args[1]
	rest := args[2:]
	if cmd == "keystore policy" {
		if len(rest) == 0 || rest[0] != "set" {
			return errUsage
		}
		cmd, rest = "keystore policy set", rest[1:]
	}
	var prefix, pool, keyID, usage, label, akid string
	var existing bool
	var principals, vpcs, vpces listFlag
	str := func(p *string, name, def, help string) func(*flag.FlagSet) {
		return func(fs *flag.FlagSet) { fs.StringVar(p, name, def, help) }
	}
	defs := func(ds ...func(*flag.FlagSet)) func(*flag.FlagSet) {
		return func(fs *flag.FlagSet) {
			for _, d := range ds {
				d(fs)
			}
		}
	}
	prefixFlag := str(&prefix, "prefix", "", "key store URI prefix, e.g. /example")
	storeFlag := str(&prefix, "keystore", "", "key store URI prefix")
	idFlag := str(&keyID, "id", "", "XKS key id")
	run := func(define func(*flag.FlagSet), fn func(context.Context, *operator) error) error {
		return withOperator(ctx, "xks "+cmd, rest, getenv, stdout, stderr, define, func(ctx context.Context, o *operator) error {
			// Operators may write "/a/b" (the AWS XksProxyUriPath style) or "a/b".
			prefix = strings.Trim(prefix, "/")
			return fn(ctx, o)
		})
	}
	switch cmd {
	case "keystore create":
		return run(defs(prefixFlag, str(&pool, "pool", "default", "keyworker pool holding the store's keys")),
			func(ctx context.Context, o *operator) error {
				return o.audited(ctx, "keystore.create", map[string]string{"keystore": prefix, "pool": pool}, func() error { return o.keystoreCreate(ctx, prefix, pool) })
			})
	case "keystore list":
		return run(defs(), func(ctx context.Context, o *operator) error { return o.keystoreList(ctx) })
	case "keystore rotate-credential":
		return run(defs(prefixFlag), func(ctx context.Context, o *operator) error {
			return o.audited(ctx, "keystore.rotate_credential", map[string]string{"keystore": prefix}, func() error { return o.rotateCredential(ctx, prefix) })
		})
	case "keystore retire-credential":
		return run(defs(prefixFlag, str(&akid, "access-key-id", "", "credential to retire")),
			func(ctx context.Context, o *operator) error {
				return o.audited(ctx, "keystore.retire_credential", map[string]string{"keystore": prefix, "access_key_id": akid}, func() error { return o.retireCredential(ctx, prefix, akid) })
			})
	case "keystore policy set":
		return run(func(fs *flag.FlagSet) {
			prefixFlag(fs)
			fs.Var(&principals, "allow-principal", "allowed awsPrincipalArn (repeatable; trailing * matches a prefix)")
			fs.Var(&vpcs, "allow-vpc", "allowed awsSourceVpc (repeatable)")
			fs.Var(&vpces, "allow-vpce", "allowed awsSourceVpce (repeatable)")
		}, func(ctx context.Context, o *operator) error {
			p := registry.Policy{AllowedPrincipals: principals, AllowedVPCs: vpcs, AllowedVPCEs: vpces}
			return o.audited(ctx, "keystore.policy_set", map[string]string{"keystore": prefix, "principals": principals.String(), "vpcs": vpcs.String(), "vpces": vpces.String()},
				func() error { return o.policySet(ctx, prefix, p) })
		})
	case "key create":
		return run(func(fs *flag.FlagSet) {
			storeFlag(fs)
			idFlag(fs)
			fs.StringVar(&usage, "usage", "encrypt,decrypt", "encrypt,decrypt | encrypt | decrypt | none")
			fs.StringVar(&label, "label", "", "HSM object label (default derived from key store and id)")
			fs.BoolVar(&existing, "existing", false, "bind an AES-256 key already in the HSM under --label")
		}, func(ctx context.Context, o *operator) error {
			return o.audited(ctx, "key.create", map[string]string{"keystore": prefix, "key_id": keyID, "usage": usage, "label": label, "existing": fmt.Sprint(existing)},
				func() error { return o.keyCreate(ctx, prefix, keyID, usage, label, existing) })
		})
	case "key disable", "key enable":
		status := registry.StatusEnabled
		if args[1] == "disable" {
			status = registry.StatusDisabled
		}
		return run(defs(storeFlag, idFlag), func(ctx context.Context, o *operator) error {
			return o.audited(ctx, "key."+args[1], map[string]string{"keystore": prefix, "key_id": keyID}, func() error { return o.keySetStatus(ctx, prefix, keyID, status) })
		})
	case "key list":
		return run(defs(storeFlag), func(ctx context.Context, o *operator) error { return o.keyList(ctx, prefix) })
	}
	return fmt.Errorf("unknown command xks %s: %w", cmd, errUsage)
}

// displayPrefix shows a stored prefix ("a/b") as operators and AWS write it ("/a/b").
func displayPrefix(p string) string { return "/" + p }

const akidAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"

// newCredential makes an access key id of 20 characters of [A-Z2-7] and a
// 44-character secret, the shapes AWS KMS accepts for an XKS proxy.
func newCredential() (akid, secret string) {
	b := make([]byte, 20)
	_, _ = rand.Read(b)
	id := make([]byte, 20)
	for i, v := range b {
		id[i] = akidAlphabet[int(v)%len(akidAlphabet)] // 256 is a multiple of 32: no bias
	}
	s := make([]byte, 33)
	_, _ = rand.Read(s)
	return string(id), base64.StdEncoding.EncodeToString(s)
}

// sealCredential makes a credential and seals its secret with the pool's HSM.
func (o *operator) sealCredential(ctx context.Context, prefix, pool string) (registry.Credential, string, error) {
	akid, secret := newCredential()
	var sealed kwadmin.SealResponse
	if err := kwadmin.Call(ctx, o.nc, pool, kwadmin.EndpointSeal,
		kwadmin.SealRequest{Data: []byte(secret), AAD: registry.SealAAD(prefix, akid)}, &sealed); err != nil {
		return registry.Credential{}, "", fmt.Errorf("seal credential with pool %q: %w", pool, err)
	}
	return registry.Credential{AccessKeyID: akid, SealedSecret: sealed.Data, Created: time.Now().UTC()}, secret, nil
}

type credentialOut struct {
	URIPrefix       string `json:"uriPrefix"`
	URIPath         string `json:"uriPath"`
	AccessKeyID     string `json:"accessKeyId"`
	SecretAccessKey string `json:"secretAccessKey"`
}

func (o *operator) keystoreCreate(ctx context.Context, prefix, pool string) error {
	if !xks.ValidPrefix(prefix) {
		return fmt.Errorf("%w: prefix must be slash-separated segments of [A-Za-z0-9_-], at most %d characters", shared.ErrConfigValidation, xks.MaxPrefixLen)
	}
	if !shared.ValidPoolName(pool) {
		return fmt.Errorf("%w: pool %q", shared.ErrConfigValidation, pool)
	}
	cred, secret, err := o.sealCredential(ctx, prefix, pool)
	if err != nil {
		return err
	}
	ks := &registry.Keystore{Prefix: prefix, Pool: pool, Created: time.Now().UTC(), Credentials: []registry.Credential{cred}}
	if err := o.reg.CreateKeystore(ctx, ks); err != nil {
		if errors.Is(err, registry.ErrExists) {
			return fmt.Errorf("key store %q already exists", prefix)
		}
		return err
	}
	return o.print(credentialOut{URIPrefix: displayPrefix(prefix), URIPath: displayPrefix(prefix) + "/kms/xks/v1", AccessKeyID: cred.AccessKeyID, SecretAccessKey: secret})
}

type keystoreOut struct {
	URIPrefix    string          `json:"uriPrefix"`
	Pool         string          `json:"pool"`
	Created      time.Time       `json:"created"`
	AccessKeyIDs []string        `json:"accessKeyIds"`
	Policy       registry.Policy `json:"policy"`
}

func (o *operator) keystoreList(ctx context.Context) error {
	stores, err := o.reg.ListKeystores(ctx)
	if err != nil {
		return err
	}
	out := []keystoreOut{}
	for _, ks := range stores {
		k := keystoreOut{URIPrefix: displayPrefix(ks.Prefix), Pool: ks.Pool, Created: ks.Created, Policy: ks.Policy, AccessKeyIDs: []string{}}
		for _, c := range ks.Credentials {
			k.AccessKeyIDs = append(k.AccessKeyIDs, c.AccessKeyID)
		}
		out = append(out, k)
	}
	return o.print(out)
}

// updateKeystore applies fn to the key store with compare-and-set retries.
func (o *operator) updateKeystore(ctx context.Context, prefix string, fn func(*registry.Keystore) error) (*registry.Keystore, error) {
	for range 5 {
		ks, rev, err := o.reg.Keystore(ctx, prefix)
		if errors.Is(err, registry.ErrNotFound) {
			return nil, fmt.Errorf("no key store %q", prefix)
		}
		if err != nil {
			return nil, err
		}
		if err := fn(ks); err != nil {
			return nil, err
		}
		err = o.reg.UpdateKeystore(ctx, ks, rev)
		if errors.Is(err, registry.ErrConflict) {
			continue
		}
		return ks, err
	}
	return nil, fmt.Errorf("key store %q: too many concurrent updates, retry", prefix)
}

func (o *operator) rotateCredential(ctx context.Context, prefix string) error {
	ks, _, err := o.reg.Keystore(ctx, prefix)
	if err != nil {
		return fmt.Errorf("key store %q: %w", prefix, err)
	}
	cred, secret, err := o.sealCredential(ctx, prefix, ks.Pool)
	if err != nil {
		return err
	}
	if _, err := o.updateKeystore(ctx, prefix, func(ks *registry.Keystore) error {
		ks.Credentials = append(ks.Credentials, cred)
		if len(ks.Credentials) > registry.MaxCredentials { // retire the oldest
			ks.Credentials = ks.Credentials[len(ks.Credentials)-registry.MaxCredentials:]
		}
		return nil
	}); err != nil {
		return err
	}
	return o.print(credentialOut{URIPrefix: displayPrefix(prefix), URIPath: displayPrefix(prefix) + "/kms/xks/v1", AccessKeyID: cred.AccessKeyID, SecretAccessKey: secret})
}

func (o *operator) retireCredential(ctx context.Context, prefix, akid string) error {
	ks, err := o.updateKeystore(ctx, prefix, func(ks *registry.Keystore) error {
		kept := ks.Credentials[:0]
		for _, c := range ks.Credentials {
			if c.AccessKeyID != akid {
				kept = append(kept, c)
			}
		}
		if len(kept) == len(ks.Credentials) {
			return fmt.Errorf("key store %q has no credential %q", prefix, akid)
		}
		if len(kept) == 0 {
			return fmt.Errorf("refusing to retire the last credential of %q; rotate first", prefix)
		}
		ks.Credentials = kept
		return nil
	})
	if err != nil {
		return err
	}
	return o.print(map[string]any{"uriPrefix": displayPrefix(prefix), "retired": akid, "remaining": len(ks.Credentials)})
}

func (o *operator) policySet(ctx context.Context, prefix string, p registry.Policy) error {
	ks, err := o.updateKeystore(ctx, prefix, func(ks *registry.Keystore) error { ks.Policy = p; return nil })
	if err != nil {
		return err
	}
	return o.print(map[string]any{"uriPrefix": displayPrefix(prefix), "policy": ks.Policy})
}

func parseUsage(u string) (encrypt, decrypt bool, err error) {
	switch u {
	case "encrypt,decrypt", "decrypt,encrypt":
		return true, true, nil
	case "encrypt":
		return true, false, nil
	case "decrypt":
		return false, true, nil
	case "none":
		return false, false, nil
	}
	return false, false, fmt.Errorf("%w: usage must be encrypt,decrypt | encrypt | decrypt | none", shared.ErrConfigValidation)
}

type keyOut struct {
	KeyID    string   `json:"keyId"`
	Keystore string   `json:"keystore"`
	Label    string   `json:"label"`
	Status   string   `json:"status"`
	Usage    []string `json:"usage"`
	KeySpec  string   `json:"keySpec,omitempty"`
}

func (o *operator) keyCreate(ctx context.Context, prefix, keyID, usage, label string, existing bool) error {
	if !xks.ValidKeyID(keyID) {
		return fmt.Errorf("%w: key id must be 1-128 characters of [A-Za-z0-9_-]", shared.ErrConfigValidation)
	}
	ks, _, err := o.reg.Keystore(ctx, prefix)
	if err != nil {
		return fmt.Errorf("key store %q: %w", prefix, err)
	}
	if _, _, err := o.reg.Key(ctx, prefix, keyID); err == nil {
		return fmt.Errorf("key %q already exists in %q", keyID, prefix)
	}
	if label == "" {
		if existing {
			return fmt.Errorf("%w: --existing needs --label", shared.ErrConfigValidation)
		}
		label = "xks." + shared.ScopeToken(prefix) + "." + keyID
	}
	var info kwadmin.KeyInfo
	if existing {
		err = kwadmin.Call(ctx, o.nc, ks.Pool, kwadmin.EndpointKeyInfo, kwadmin.KeyRequest{Label: label}, &info)
	} else {
		enc, dec, perr := parseUsage(usage)
		if perr != nil {
			return perr
		}
		err = kwadmin.Call(ctx, o.nc, ks.Pool, kwadmin.EndpointKeyCreate, kwadmin.KeyRequest{Label: label, Encrypt: enc, Decrypt: dec}, &info)
	}
	if err != nil {
		return fmt.Errorf("hsm key %q: %w", label, err)
	}
	k := &registry.Key{Keystore: prefix, KeyID: keyID, Label: label, Status: registry.StatusEnabled, Created: time.Now().UTC()}
	if err := o.reg.CreateKey(ctx, k); err != nil {
		if errors.Is(err, registry.ErrExists) {
			return fmt.Errorf("key %q already exists in %q", keyID, prefix)
		}
		return err
	}
	return o.print(keyView(*k, &info))
}

func keyView(k registry.Key, info *kwadmin.KeyInfo) keyOut {
	out := keyOut{KeyID: k.KeyID, Keystore: displayPrefix(k.Keystore), Label: k.Label, Status: k.Status, Usage: []string{}}
	if info != nil {
		out.KeySpec = info.KeySpec
		if info.Encrypt {
			out.Usage = append(out.Usage, "ENCRYPT")
		}
		if info.Decrypt {
			out.Usage = append(out.Usage, "DECRYPT")
		}
	}
	return out
}

func (o *operator) keySetStatus(ctx context.Context, prefix, keyID, status string) error {
	for range 5 {
		k, rev, err := o.reg.Key(ctx, prefix, keyID)
		if errors.Is(err, registry.ErrNotFound) {
			return fmt.Errorf("no key %q in key store %q", keyID, prefix)
		}
		if err != nil {
			return err
		}
		k.Status = status
		err = o.reg.UpdateKey(ctx, k, rev)
		if errors.Is(err, registry.ErrConflict) {
			continue
		}
		if err != nil {
			return err
		}
		return o.print(keyView(*k, nil))
	}
	return fmt.Errorf("key %q: too many concurrent updates, retry", keyID)
}

func (o *operator) keyList(ctx context.Context, prefix string) error {
	ks, _, err := o.reg.Keystore(ctx, prefix)
	if err != nil {
		return fmt.Errorf("key store %q: %w", prefix, err)
	}
	keys, err := o.reg.ListKeys(ctx, prefix)
	if err != nil {
		return err
	}
	out := []keyOut{}
	for _, k := range keys {
		var info kwadmin.KeyInfo
		ip := &info
		if err := kwadmin.Call(ctx, o.nc, ks.Pool, kwadmin.EndpointKeyInfo, kwadmin.KeyRequest{Label: k.Label}, &info); err != nil {
			ip = nil
		}
		out = append(out, keyView(k, ip))
	}
	return o.print(out)
}
