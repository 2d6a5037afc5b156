package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
)

// Authentication methods a tenant may allow for the volume-secret API.
const (
	authMTLS = "mtls"
	authAWS  = "aws"
)

func runTenant(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) < 1 {
		return errUsage
	}
	cmd, rest := args[0], args[1:]
	var id, ekt, bucket, account, role, pool string
	var methods listFlag
	var awsOpt awsTenantOptions
	idFlag := func(fs *flag.FlagSet) {
		fs.StringVar(&id, "id", "", "tenant id (1-64 chars of [A-Za-z0-9_-], e.g. a VPC id)")
	}
	run := func(define func(*flag.FlagSet), fn func(context.Context, *operator, *registry.Tenants) error) error {
		return withOperator(ctx, "tenant "+cmd, rest, getenv, stdout, stderr, define, func(ctx context.Context, o *operator) error {
			tenants, err := registry.OpenTenants(ctx, o.js, o.topo)
			if err != nil {
				return err
			}
			return fn(ctx, o, tenants)
		})
	}
	switch cmd {
	case "create":
		return run(func(fs *flag.FlagSet) {
			idFlag(fs)
			fs.StringVar(&ekt, "ekt-name", "", "name of the tenant master key's EKT (default: the tenant id; tenants may share one)")
			fs.StringVar(&bucket, "audit-bucket", "", "the tenant's own S3 bucket for audit export")
			fs.StringVar(&account, "account", "", "the tenant's AWS account id (AWS instance identity)")
			fs.StringVar(&role, "role-arn", "", "cross-account role sovkeys assumes (AWS instance identity)")
			fs.StringVar(&pool, "pool", "default", "keyworker pool holding the tenant's hierarchy")
			fs.Var(&methods, "auth", "allowed caller authentication: mtls (default), aws")
			fs.StringVar(&awsOpt.region, "region", "", "AWS region of the tenant's instances (default: authn's --aws-region)")
			fs.BoolVar(&awsOpt.checkSourceIP, "check-source-ip", false, "AWS identity: the caller's source IP must be one of the instance's private addresses")
		}, func(ctx context.Context, o *operator, r *registry.Tenants) error {
			return o.audited(ctx, "tenant.create", map[string]string{"tenant": id, "ekt_name": ekt, "pool": pool, "auth": methods.String()},
				func() error { return tenantCreate(ctx, o, r, id, ekt, bucket, account, role, pool, methods, awsOpt) })
		})
	case "list":
		return run(func(*flag.FlagSet) {}, func(ctx context.Context, o *operator, r *registry.Tenants) error {
			tenants, err := r.List(ctx)
			if err != nil {
				return err
			}
			if tenants == nil {
				tenants = []registry.Tenant{}
			}
			return o.print(tenants)
		})
	case "show":
		return run(idFlag, func(ctx context.Context, o *operator, r *registry.Tenants) error {
			tn, _, err := r.Get(ctx, id)
			if errors.Is(err, registry.ErrNotFound) {
				return fmt.Errorf("no tenant %q", id)
			}
			if err != nil {
				return err
			}
			return o.print(tn)
		})
	case "disable", "enable":
		status := registry.TenantEnabled
		if cmd == "disable" {
			status = registry.TenantDisabled
		}
		return run(idFlag, func(ctx context.Context, o *operator, r *registry.Tenants) error {
			return o.audited(ctx, "tenant."+cmd, map[string]string{"tenant": id}, func() error { return tenantSetStatus(ctx, o, r, id, status) })
		})
	}
	return fmt.Errorf("unknown command tenant %s: %w", cmd, errUsage)
}

func tenantCreate(ctx context.Context, o *operator, r *registry.Tenants, id, ekt, bucket, account, role, pool string, methods []string, awsOpt awsTenantOptions) error {
	if !registry.ValidTenantID(id) {
		return fmt.Errorf("%w: tenant id must be 1-64 characters of [A-Za-z0-9_-]", shared.ErrConfigValidation)
	}
	if ekt == "" {
		ekt = id
	}
	if !registry.ValidTenantID(ekt) {
		return fmt.Errorf("%w: ekt name must be 1-64 characters of [A-Za-z0-9_-]", shared.ErrConfigValidation)
	}
	if !shared.ValidPoolName(pool) {
		return fmt.Errorf("%w: pool %q", shared.ErrConfigValidation, pool)
	}
	if len(methods) == 0 {
		methods = []string{authMTLS}
	}
	for _, m := range methods {
		if m != authMTLS && m != authAWS {
			return fmt.Errorf("%w: auth method %q (mtls, aws)", shared.ErrConfigValidation, m)
		}
		if m == authAWS && (account == "" || role == "") {
			return fmt.Errorf("%w: --auth aws needs --account and --role-arn", shared.ErrConfigValidation)
		}
		if m == authAWS {
			if err := awsOpt.validate(id, account, role); err != nil {
				return err
			}
		}
	}
	tn := &registry.Tenant{
		ID: id, EKTName: ekt, Pool: pool, AuditBucket: bucket, Account: account, RoleARN: role,
		AuthMethods: methods, Status: registry.TenantEnabled, Created: time.Now().UTC(),
		Region: awsOpt.region, CheckSourceIP: awsOpt.checkSourceIP,
	}
	if err := r.Create(ctx, tn); err != nil {
		if errors.Is(err, registry.ErrExists) {
			return fmt.Errorf("tenant %q already exists", id)
		}
		return err
	}
	return o.print(tn)
}

func tenantSetStatus(ctx context.Context, o *operator, r *registry.Tenants, id, status string) error {
	for range 5 {
		tn, rev, err := r.Get(ctx, id)
		if errors.Is(err, registry.ErrNotFound) {
			return fmt.Errorf("no tenant %q", id)
		}
		if err != nil {
			return err
		}
		tn.Status = status
		err = r.Update(ctx, tn, rev)
		if errors.Is(err, registry.ErrConflict) {
			continue
		}
		if err != nil {
			return err
		}
		return o.print(tn)
	}
	return fmt.Errorf("tenant %q: too many concurrent updates, retry", id)
}

// awsTenantOptions are the AWS instance identity settings of a tenant
// (docs/aws-identity.md).
type awsTenantOptions struct {
	region        string
	checkSourceIP bool
}

// validate checks a tenant that allows AWS identity: its id is its VPC id
// (authn checks the instance's VPC against it), the account is 12 digits
// and the role to assume lives in that account.
func (a awsTenantOptions) validate(id, account, role string) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", shared.ErrConfigValidation, fmt.Sprintf(format, args...))
	}
	if hexPart, ok := strings.CutPrefix(id, "vpc-"); !ok || len(hexPart) != 8 && len(hexPart) != 17 || strings.Trim(hexPart, "0123456789abcdef") != "" {
		return bad("with --auth aws the tenant id is the VPC id of its instances (vpc-0123456789abcdef0), not %q", id)
	}
	if len(account) != 12 || strings.Trim(account, "0123456789") != "" {
		return bad("--account must be a 12-digit AWS account id")
	}
	p := strings.SplitN(role, ":", 6)
	if len(p) != 6 || p[0] != "arn" || p[2] != "iam" || p[4] != account || !strings.HasPrefix(p[5], "role/") {
		return bad("--role-arn must be a role of account %s (arn:aws:iam::%s:role/NAME)", account, account)
	}
	if a.region != "" && strings.Trim(a.region, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
		return bad("--region %q is not an AWS region name", a.region)
	}
	return nil
}
