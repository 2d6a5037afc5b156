package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/registry"
	"github.com/sovkeys/sovkeys/shared/infra/writeonce"
)

// Authentication methods a tenant may allow for the volume-secret API.
const (
	authMTLS = "mtls"
	authAWS  = "aws"
)

// tenantFlags are the flags of the tenant commands.
type tenantFlags struct {
	id, ekt, bucket, account, role, pool string
	methods                              listFlag
	aws                                  awsTenantOptions
	requireSig                           bool
}

func (f *tenantFlags) idFlag(fs *flag.FlagSet) {
	fs.StringVar(&f.id, "id", "", "tenant id (1-64 chars of [A-Za-z0-9_-], e.g. a VPC id)")
}

func tenantCommands() []command {
	setStatus := func(verb, status string) command {
		return operatorCommand("tenant "+verb, "--id TENANT", verb+" a tenant's volume secrets",
			(*tenantFlags).idFlag, func(ctx context.Context, o *operator, f *tenantFlags) error {
				return o.audited(ctx, "tenant."+verb, map[string]string{"tenant": f.id}, func() error { return o.tenantSetStatus(ctx, f.id, status) })
			})
	}
	return []command{
		operatorCommand("tenant create", "--id TENANT [--ekt-name NAME] [--audit-bucket B] [--auth mtls|aws] [--account A --role-arn R --region R --check-source-ip]",
			"create a volume-secret tenant (AWS identity: docs/aws-identity.md)",
			func(f *tenantFlags, fs *flag.FlagSet) {
				f.idFlag(fs)
				fs.StringVar(&f.ekt, "ekt-name", "", "name of the tenant master key's EKT (default: the tenant id; tenants may share one)")
				fs.StringVar(&f.bucket, "audit-bucket", "", "the tenant's own S3 bucket for audit export")
				fs.StringVar(&f.account, "account", "", "the tenant's AWS account id (AWS instance identity)")
				fs.StringVar(&f.role, "role-arn", "", "cross-account role sovkeys assumes (AWS instance identity)")
				fs.StringVar(&f.pool, "pool", "default", "keyworker pool holding the tenant's hierarchy")
				fs.Var(&f.methods, "auth", "allowed caller authentication: mtls (default), aws")
				fs.StringVar(&f.aws.region, "region", "", "AWS region of the tenant's instances (default: authn's --aws-region)")
				fs.BoolVar(&f.aws.checkSourceIP, "check-source-ip", false, "AWS identity: the caller's source IP must be one of the instance's private addresses")
				fs.BoolVar(&f.requireSig, "require-request-signatures", true, "certificate callers must sign every request with their instance key (RFC 9421; sk-agent, vsclient and docs/examples do); =false for older clients")
			}, func(ctx context.Context, o *operator, f *tenantFlags) error {
				return o.audited(ctx, "tenant.create", map[string]string{"tenant": f.id, "ekt_name": f.ekt, "pool": f.pool, "auth": f.methods.String()},
					func() error { return o.tenantCreate(ctx, f) })
			}),
		operatorCommand("tenant list", "", "list tenants", none, func(ctx context.Context, o *operator, _ *struct{}) error {
			r, err := o.openTenants(ctx)
			if err != nil {
				return err
			}
			tenants, err := r.List(ctx)
			if err != nil {
				return err
			}
			if tenants == nil {
				tenants = []registry.Tenant{}
			}
			return o.print(tenants)
		}),
		operatorCommand("tenant show", "--id TENANT", "show one tenant", (*tenantFlags).idFlag, func(ctx context.Context, o *operator, f *tenantFlags) error {
			r, err := o.openTenants(ctx)
			if err != nil {
				return err
			}
			tn, _, err := r.Get(ctx, f.id)
			if errors.Is(err, registry.ErrNotFound) {
				return fmt.Errorf("no tenant %q", f.id)
			}
			if err != nil {
				return err
			}
			return o.print(tn)
		}),
		setStatus("disable", registry.TenantDisabled),
		setStatus("enable", registry.TenantEnabled),
		operatorCommand("tenant delete", "--id TENANT", "delete a tenant (waits for a second admin's approval: exit 3 with the request id); its EKT and audit log stay",
			(*tenantFlags).idFlag, func(ctx context.Context, o *operator, f *tenantFlags) error {
				return o.audited(ctx, "tenant.delete", map[string]string{"tenant": f.id}, func() error {
					r, err := o.openTenants(ctx)
					if err != nil {
						return err
					}
					if _, _, err := r.Get(ctx, f.id); err != nil {
						return fmt.Errorf("tenant %q: %w", f.id, err)
					}
					return r.KV.Delete(ctx, f.id)
				})
			}),
	}
}

func (o *operator) tenantCreate(ctx context.Context, f *tenantFlags) error {
	id, ekt, methods := f.id, f.ekt, []string(f.methods)
	if !registry.ValidTenantID(id) {
		return fmt.Errorf("%w: tenant id must be 1-64 characters of [A-Za-z0-9_-]", shared.ErrConfigValidation)
	}
	if ekt == "" {
		ekt = id
	}
	if !registry.ValidTenantID(ekt) || !writeonce.ValidName(ekt) {
		// The EKT store takes lowercase names only: a tenant whose EKT
		// name has upper case could never get its key hierarchy.
		return fmt.Errorf("%w: ekt name (default: the tenant id) %q must be 1-64 characters of [a-z0-9_-]", shared.ErrConfigValidation, ekt)
	}
	if !shared.ValidPoolName(f.pool) {
		return fmt.Errorf("%w: pool %q", shared.ErrConfigValidation, f.pool)
	}
	if len(methods) == 0 {
		methods = []string{authMTLS}
	}
	for _, m := range methods {
		if m != authMTLS && m != authAWS {
			return fmt.Errorf("%w: auth method %q (mtls, aws)", shared.ErrConfigValidation, m)
		}
		if m == authAWS && (f.account == "" || f.role == "") {
			return fmt.Errorf("%w: --auth aws needs --account and --role-arn", shared.ErrConfigValidation)
		}
		if m == authAWS {
			if err := f.aws.validate(id, f.account, f.role); err != nil {
				return err
			}
		}
	}
	r, err := o.openTenants(ctx)
	if err != nil {
		return err
	}
	tn := &registry.Tenant{
		ID: id, EKTName: ekt, Pool: f.pool, AuditBucket: f.bucket, Account: f.account, RoleARN: f.role,
		AuthMethods: methods, Status: registry.TenantEnabled, Created: time.Now().UTC(),
		Region: f.aws.region, CheckSourceIP: f.aws.checkSourceIP,
		RequireRequestSignatures: f.requireSig,
	}
	if err := r.Create(ctx, tn); err != nil {
		if errors.Is(err, registry.ErrExists) {
			return fmt.Errorf("tenant %q already exists", id)
		}
		return err
	}
	return o.print(tn)
}

func (o *operator) tenantSetStatus(ctx context.Context, id, status string) error {
	r, err := o.openTenants(ctx)
	if err != nil {
		return err
	}
	tn, err := r.Modify(ctx, id, func(tn *registry.Tenant) error { tn.Status = status; return nil })
	if errors.Is(err, registry.ErrNotFound) {
		return fmt.Errorf("no tenant %q", id)
	}
	if err != nil {
		return err
	}
	return o.print(tn)
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
