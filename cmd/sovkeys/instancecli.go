package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
)

// instanceFlags are the flags of `instance issue-cert`.
type instanceFlags struct {
	tenant, instance, out string
	days                  int
}

func instanceCommands() []command {
	return []command{operatorCommand("instance issue-cert", "--tenant TENANT --instance INSTANCE_ID --out DIR [--days 365]",
		"issue an instance's client certificate (CA key in the HSM)",
		func(f *instanceFlags, fs *flag.FlagSet) {
			fs.StringVar(&f.tenant, "tenant", "", "tenant id")
			fs.StringVar(&f.instance, "instance", "", "instance id (the {InstanceId} the instance will call with)")
			fs.StringVar(&f.out, "out", "", "directory for cert.pem, key.pem, signing-key.pem, instance-ca.pem")
			fs.IntVar(&f.days, "days", 365, "validity in days")
		}, func(ctx context.Context, o *operator, f *instanceFlags) error {
			return o.audited(ctx, "instance.issue_cert", map[string]string{"tenant": f.tenant, "instance": f.instance, "days": fmt.Sprint(f.days)},
				func() error { return issueCert(ctx, o, f.tenant, f.instance, f.out, f.days) })
		})}
}

func issueCert(ctx context.Context, o *operator, tenant, instance, out string, days int) error {
	if out == "" {
		return fmt.Errorf("%w: --out is required", shared.ErrConfigValidation)
	}
	tenants, err := registry.OpenTenants(ctx, o.js, o.topo)
	if err != nil {
		return err
	}
	tn, _, err := tenants.Get(ctx, tenant)
	if errors.Is(err, registry.ErrNotFound) {
		return fmt.Errorf("no tenant %q (create it with: sovkeys tenant create --id %s)", tenant, tenant)
	}
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	var resp kwadmin.IssueCertResponse
	if err := kwadmin.Call(ctx, o.nc, tn.Pool, kwadmin.EndpointIssueCert,
		kwadmin.IssueCertRequest{Tenant: tenant, Instance: instance, PublicKey: pubDER, Days: days}, &resp); err != nil {
		return fmt.Errorf("issue certificate: %w", err)
	}
	pins, err := o.js.KeyValue(ctx, shared.BucketPins)
	if err != nil {
		return fmt.Errorf("pinned keys: %w", err)
	}
	signing, err := pins.Get(ctx, shared.PKISigningKey(tn.Pool)) // pinned write-once
	if err != nil {
		return fmt.Errorf("signing key of pool %q: %w", tn.Pool, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o700); err != nil {
		return err
	}
	files := []struct {
		name, typ string
		der       []byte
		mode      os.FileMode
	}{
		{"key.pem", "PRIVATE KEY", keyDER, 0o600},
		{"cert.pem", "CERTIFICATE", resp.Certificate, 0o644},
		{"instance-ca.pem", "CERTIFICATE", resp.CA, 0o644},
		{"signing-key.pem", "PUBLIC KEY", signing.Value(), 0o644},
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(out, f.name), pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der}), f.mode); err != nil {
			return err
		}
	}
	clear(keyDER)
	return o.print(map[string]string{
		"tenant": tenant, "instance": instance,
		"cert": filepath.Join(out, "cert.pem"), "key": filepath.Join(out, "key.pem"),
		"signingKey": filepath.Join(out, "signing-key.pem"),
	})
}
