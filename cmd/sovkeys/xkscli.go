package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/api/xks"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
)

// xksFlags are the flags of the xks commands; each command registers the
// ones it uses.
type xksFlags struct {
	prefix, pool, keyID, usage, label, akid string
	existing, force                         bool
	wait                                    time.Duration
	principals, vpcs, vpces                 listFlag
}

// storePrefix is the stored form of a key store prefix: operators may
// write "/a/b" (the AWS XksProxyUriPath style) or "a/b".
func (f *xksFlags) storePrefix() string { return strings.Trim(f.prefix, "/") }

func (f *xksFlags) prefixFlag(fs *flag.FlagSet) {
	fs.StringVar(&f.prefix, "prefix", "", "key store URI prefix, e.g. /example")
}

func (f *xksFlags) keystoreFlag(fs *flag.FlagSet) {
	fs.StringVar(&f.prefix, "keystore", "", "key store URI prefix")
}

func (f *xksFlags) keyFlags(fs *flag.FlagSet) {
	f.keystoreFlag(fs)
	fs.StringVar(&f.keyID, "id", "", "XKS key id")
}

func xksCommands() []command {
	keySetStatus := func(verb, status string) command {
		return operatorCommand("xks key "+verb, "--keystore PREFIX --id KEYID", verb+" a key (KMS sees "+status+")",
			(*xksFlags).keyFlags, func(ctx context.Context, o *operator, f *xksFlags) error {
				p := f.storePrefix()
				return o.audited(ctx, "key."+verb, map[string]string{"keystore": p, "key_id": f.keyID},
					func() error { return o.keySetStatus(ctx, p, f.keyID, status) })
			})
	}
	return []command{
		operatorCommand("xks keystore create", "--prefix PREFIX [--pool default]", "create a key store; prints its first credential once",
			func(f *xksFlags, fs *flag.FlagSet) {
				f.prefixFlag(fs)
				fs.StringVar(&f.pool, "pool", "default", "keyworker pool holding the store's keys")
			}, func(ctx context.Context, o *operator, f *xksFlags) error {
				p := f.storePrefix()
				return o.audited(ctx, "keystore.create", map[string]string{"keystore": p, "pool": f.pool},
					func() error { return o.keystoreCreate(ctx, p, f.pool) })
			}),
		operatorCommand("xks keystore delete", "--prefix PREFIX", "delete a key store that has no keys left (waits for a second admin's approval: exit 3 with the request id)",
			func(f *xksFlags, fs *flag.FlagSet) { f.prefixFlag(fs) }, func(ctx context.Context, o *operator, f *xksFlags) error {
				p := f.storePrefix()
				return o.audited(ctx, "keystore.delete", map[string]string{"keystore": p}, func() error {
					if _, _, err := o.reg.Keystore(ctx, p); err != nil {
						return fmt.Errorf("key store %q: %w", p, err)
					}
					return o.reg.Keystores.Delete(ctx, registry.KeystoreKey(p))
				})
			}),
		operatorCommand("xks key schedule-deletion", "--keystore PREFIX --id KEYID [--waiting-period 720h]",
			"schedule a key's destruction (KMS sees it DISABLED at once; its HSM versions are destroyed after the waiting period; waits for a second admin: exit 3)",
			func(f *xksFlags, fs *flag.FlagSet) {
				f.keyFlags(fs)
				fs.DurationVar(&f.wait, "waiting-period", 30*24*time.Hour, "time before the key is destroyed (at least 7 days unless authn's --key-deletion-min-wait says less)")
			}, func(ctx context.Context, o *operator, f *xksFlags) error {
				p := f.storePrefix()
				at := time.Now().Add(f.wait).UTC()
				return o.audited(ctx, "key.schedule_deletion", map[string]string{"keystore": p, "key_id": f.keyID, "delete_after": at.Format(time.RFC3339)},
					func() error {
						return o.keyDeletion(ctx, p, f.keyID, func(k *registry.Key) error {
							if k.Status == registry.StatusPendingDeletion {
								return fmt.Errorf("%w: key %q is already scheduled for deletion", shared.ErrConfigValidation, f.keyID)
							}
							k.Status, k.DeleteAfter = registry.StatusPendingDeletion, &at
							return nil
						})
					})
			}),
		operatorCommand("xks key cancel-deletion", "--keystore PREFIX --id KEYID", "cancel a scheduled key deletion (the key stays DISABLED: enable it after)",
			(*xksFlags).keyFlags, func(ctx context.Context, o *operator, f *xksFlags) error {
				p := f.storePrefix()
				return o.audited(ctx, "key.cancel_deletion", map[string]string{"keystore": p, "key_id": f.keyID}, func() error {
					return o.keyDeletion(ctx, p, f.keyID, func(k *registry.Key) error {
						if k.Status != registry.StatusPendingDeletion {
							return fmt.Errorf("%w: key %q is not scheduled for deletion", shared.ErrConfigValidation, f.keyID)
						}
						k.Status, k.DeleteAfter = registry.StatusDisabled, nil
						return nil
					})
				})
			}),
		operatorCommand("xks keystore list", "", "list key stores", none,
			func(ctx context.Context, o *operator, _ *struct{}) error { return o.keystoreList(ctx) }),
		operatorCommand("xks keystore rotate-credential", "--prefix PREFIX [--force]", "add a second live credential (printed once); refused while two are live unless --force retires the oldest",
			func(f *xksFlags, fs *flag.FlagSet) {
				f.prefixFlag(fs)
				fs.BoolVar(&f.force, "force", false, "with two live credentials, retire the oldest (KMS must no longer use it)")
			}, func(ctx context.Context, o *operator, f *xksFlags) error {
				p := f.storePrefix()
				return o.audited(ctx, "keystore.rotate_credential", map[string]string{"keystore": p, "force": fmt.Sprint(f.force)},
					func() error { return o.rotateCredential(ctx, p, f.force) })
			}),
		operatorCommand("xks keystore retire-credential", "--prefix PREFIX --access-key-id ID", "retire a credential (never the last)",
			func(f *xksFlags, fs *flag.FlagSet) {
				f.prefixFlag(fs)
				fs.StringVar(&f.akid, "access-key-id", "", "credential to retire")
			}, func(ctx context.Context, o *operator, f *xksFlags) error {
				p := f.storePrefix()
				return o.audited(ctx, "keystore.retire_credential", map[string]string{"keystore": p, "access_key_id": f.akid},
					func() error { return o.retireCredential(ctx, p, f.akid) })
			}),
		operatorCommand("xks keystore policy set", "--prefix PREFIX [--allow-principal ARN]... [--allow-vpc VPC]... [--allow-vpce VPCE]...",
			"set (or with no --allow-* clear) a key store's secondary authorization",
			func(f *xksFlags, fs *flag.FlagSet) {
				f.prefixFlag(fs)
				fs.Var(&f.principals, "allow-principal", "allowed awsPrincipalArn (repeatable; trailing * matches a prefix)")
				fs.Var(&f.vpcs, "allow-vpc", "allowed awsSourceVpc (repeatable)")
				fs.Var(&f.vpces, "allow-vpce", "allowed awsSourceVpce (repeatable)")
			}, func(ctx context.Context, o *operator, f *xksFlags) error {
				p := f.storePrefix()
				pol := registry.Policy{AllowedPrincipals: f.principals, AllowedVPCs: f.vpcs, AllowedVPCEs: f.vpces}
				return o.audited(ctx, "keystore.policy_set", map[string]string{"keystore": p, "principals": f.principals.String(), "vpcs": f.vpcs.String(), "vpces": f.vpces.String()},
					func() error { return o.policySet(ctx, p, pol) })
			}),
		operatorCommand("xks key create", "--keystore PREFIX --id KEYID [--usage encrypt,decrypt|encrypt|decrypt|none] [--label L] [--existing]",
			"create an AES-256 key in the pool's HSM (or bind an existing one) and register it",
			func(f *xksFlags, fs *flag.FlagSet) {
				f.keyFlags(fs)
				fs.StringVar(&f.usage, "usage", "encrypt,decrypt", "encrypt,decrypt | encrypt | decrypt | none")
				fs.StringVar(&f.label, "label", "", "HSM object label (default derived from key store and id)")
				fs.BoolVar(&f.existing, "existing", false, "bind an AES-256 key already in the HSM under --label")
			}, func(ctx context.Context, o *operator, f *xksFlags) error {
				p := f.storePrefix()
				return o.audited(ctx, "key.create", map[string]string{"keystore": p, "key_id": f.keyID, "usage": f.usage, "label": f.label, "existing": fmt.Sprint(f.existing)},
					func() error { return o.keyCreate(ctx, p, f.keyID, f.usage, f.label, f.existing) })
			}),
		keySetStatus("disable", registry.StatusDisabled),
		keySetStatus("enable", registry.StatusEnabled),
		operatorCommand("xks key list", "--keystore PREFIX", "list a key store's keys with their HSM attributes",
			(*xksFlags).keystoreFlag, func(ctx context.Context, o *operator, f *xksFlags) error { return o.keyList(ctx, f.storePrefix()) }),
	}
}

// displayPrefix shows a stored prefix ("a/b") as operators and AWS write it ("/a/b").
func displayPrefix(p string) string { return "/" + p }

type credentialOut struct {
	URIPrefix       string `json:"uriPrefix"`
	URIPath         string `json:"uriPath"`
	AccessKeyID     string `json:"accessKeyId"`
	SecretAccessKey string `json:"secretAccessKey"`
}

func credentialView(prefix string, c registry.Credential, secret string) credentialOut {
	return credentialOut{URIPrefix: displayPrefix(prefix), URIPath: displayPrefix(prefix) + "/kms/xks/v1", AccessKeyID: c.AccessKeyID, SecretAccessKey: secret}
}

func (o *operator) keystoreCreate(ctx context.Context, prefix, pool string) error {
	if !xks.ValidPrefix(prefix) {
		return fmt.Errorf("%w: prefix must be slash-separated segments of [A-Za-z0-9_-], at most %d characters", shared.ErrConfigValidation, xks.MaxPrefixLen)
	}
	if !shared.ValidPoolName(pool) {
		return fmt.Errorf("%w: pool %q", shared.ErrConfigValidation, pool)
	}
	cred, secret, err := registry.MintCredential(ctx, registry.KWAdminSealer(o.nc), prefix, pool, time.Now())
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
	return o.print(credentialView(prefix, cred, secret))
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

// modifyKeystore applies fn to the key store (registry.Modify), naming a
// missing one.
func (o *operator) modifyKeystore(ctx context.Context, prefix string, fn func(*registry.Keystore) error) (*registry.Keystore, error) {
	ks, err := o.reg.ModifyKeystore(ctx, prefix, fn)
	if errors.Is(err, registry.ErrNotFound) {
		return nil, fmt.Errorf("no key store %q", prefix)
	}
	return ks, err
}

func (o *operator) rotateCredential(ctx context.Context, prefix string, force bool) error {
	ks, _, err := o.reg.Keystore(ctx, prefix)
	if err != nil {
		return fmt.Errorf("key store %q: %w", prefix, err)
	}
	if len(ks.Credentials) >= registry.MaxCredentials && !force {
		// Checked before minting too, so a refused rotation seals nothing.
		return ks.AddCredential(registry.Credential{}, false)
	}
	cred, secret, err := registry.MintCredential(ctx, registry.KWAdminSealer(o.nc), prefix, ks.Pool, time.Now())
	if err != nil {
		return err
	}
	if _, err := o.modifyKeystore(ctx, prefix, func(ks *registry.Keystore) error { return ks.AddCredential(cred, force) }); err != nil {
		return err
	}
	return o.print(credentialView(prefix, cred, secret))
}

func (o *operator) retireCredential(ctx context.Context, prefix, akid string) error {
	ks, err := o.modifyKeystore(ctx, prefix, func(ks *registry.Keystore) error { return ks.RetireCredential(akid) })
	if err != nil {
		return err
	}
	return o.print(map[string]any{"uriPrefix": displayPrefix(prefix), "retired": akid, "remaining": len(ks.Credentials)})
}

func (o *operator) policySet(ctx context.Context, prefix string, p registry.Policy) error {
	ks, err := o.modifyKeystore(ctx, prefix, func(ks *registry.Keystore) error { ks.Policy = p; return nil })
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
	// HSMError says why the HSM attributes are missing from a listed key.
	HSMError string `json:"hsmError,omitempty"`
	// DeleteAfter is when a key pending deletion is destroyed (RFC 3339).
	DeleteAfter string `json:"deleteAfter,omitempty"`
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
	} else if !errors.Is(err, registry.ErrNotFound) {
		return err
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
	if k.DeleteAfter != nil {
		out.DeleteAfter = k.DeleteAfter.UTC().Format(time.RFC3339)
	}
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

// keyDeletion changes a key's deletion state with change.
func (o *operator) keyDeletion(ctx context.Context, prefix, keyID string, change func(*registry.Key) error) error {
	k, err := o.reg.ModifyKey(ctx, prefix, keyID, change)
	if errors.Is(err, registry.ErrNotFound) {
		return fmt.Errorf("no key %q in key store %q", keyID, prefix)
	}
	if err != nil {
		return err
	}
	return o.print(keyView(*k, nil))
}

func (o *operator) keySetStatus(ctx context.Context, prefix, keyID, status string) error {
	k, err := o.reg.ModifyKey(ctx, prefix, keyID, func(k *registry.Key) error { k.Status = status; return nil })
	if errors.Is(err, registry.ErrNotFound) {
		return fmt.Errorf("no key %q in key store %q", keyID, prefix)
	}
	if err != nil {
		return err
	}
	return o.print(keyView(*k, nil))
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
		if err := kwadmin.Call(ctx, o.nc, ks.Pool, kwadmin.EndpointKeyInfo, kwadmin.KeyRequest{Label: k.Label}, &info); err != nil {
			// The key stays listed; its HSM attributes are unknown.
			v := keyView(k, nil)
			v.HSMError = err.Error()
			out = append(out, v)
			continue
		}
		out = append(out, keyView(k, &info))
	}
	return o.print(out)
}
