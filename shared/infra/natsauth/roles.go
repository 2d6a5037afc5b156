package natsauth

import (
	"fmt"
	"slices"
	"strings"

	"github.com/sovkeys/sovkeys/shared"
)

// People (docs/security.md, "Roles"). Every administrator, custodian and
// auditor has a NATS user of their own (shared.PersonUserPrefix + name)
// whose nkey also signs their admin requests (shared/infra/roster). A
// person's rights are the union of their roles' allow lists below, on top
// of what every person has; denyPerson is denied whatever the roles say:
// no person reads a service's replies or another inbox, declares,
// reconfigures, deletes or purges a stream, queues HSM work, writes the
// audit log or publishes audit events as anyone but themselves.

// Role names a permission set of a person.
type Role string

// The roles of the issue "Operators are people".
const (
	// RoleAdmin manages key stores, keys, tenants, instances and pools.
	RoleAdmin Role = "admin"
	// RoleSecurity engages and releases kill switches, rotates SigV4
	// credentials and approves changes to people and the quorum.
	RoleSecurity Role = "security"
	// RoleCustodian submits unseal shares, nothing else.
	RoleCustodian Role = "custodian"
	// RoleAuditor reads the audit log and its export, verifies and proves.
	RoleAuditor Role = "auditor"
)

// Roles lists every role, in the order help texts show them.
func Roles() []Role { return []Role{RoleAdmin, RoleSecurity, RoleCustodian, RoleAuditor} }

// ParseRoles reads "admin+security" (or a comma list) into roles, refusing
// unknown and repeated ones.
func ParseRoles(s string) ([]Role, error) {
	var out []Role
	for _, part := range strings.FieldsFunc(s, func(r rune) bool { return r == '+' || r == ',' }) {
		r := Role(strings.TrimSpace(part))
		if !slices.Contains(Roles(), r) {
			return nil, fmt.Errorf("%w: unknown role %q (roles: admin, security, custodian, auditor)", shared.ErrConfigValidation, r)
		}
		if slices.Contains(out, r) {
			return nil, fmt.Errorf("%w: role %q given twice", shared.ErrConfigValidation, r)
		}
		out = append(out, r)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: a person needs at least one role", shared.ErrConfigValidation)
	}
	return out, nil
}

// BootstrapPerson is the name the bootstrap identity's roster changes are
// audited under (sovkeys.audit.cli-bootstrap.>): it is nobody's person name
// (ValidPersonName refuses no name, so add refuses this one).
const BootstrapPerson = "bootstrap"

// PersonUser is the NATS user name of person name.
func PersonUser(name string) string { return shared.PersonUserPrefix + name }

// kwadmin grants requests to the endpoints of every pool's keyworkers.
func kwadmin(endpoints ...string) []string {
	out := make([]string, 0, len(endpoints))
	for _, e := range endpoints {
		out = append(out, shared.KeyworkerAdminSubject(any1, e))
	}
	return out
}

// personAuditPrefixes are the audit subjects of person name on every
// audit sibling: sovkeys.audit[i].cli-<name>.>.
func personAuditPrefixes(name string) []string {
	return auditPrefixes(shared.AuditServicePerson(name))
}

// rolePub is what role adds to a person's publish allow list.
func rolePub(r Role) []string {
	switch r {
	case RoleAdmin:
		// Key stores, keys and tenants change through authn's registry
		// endpoint (signed, audited, quorum), never a KV write.
		return join(kwadmin(shared.EndpointKeyCreate, shared.EndpointKeyInfo, shared.EndpointKeyList, shared.EndpointKeyVersion,
			shared.EndpointSeal, shared.EndpointIssueCert, shared.EndpointHealth), []string{shared.AuthnAdminSubject(shared.EndpointRegistry)})
	case RoleSecurity:
		// Credential rotation rewrites a key store's entry through authn's
		// registry endpoint (its credentials sealed by the pool's HSM: the
		// seal endpoint). The kill switch is a direct write: engaging must
		// not wait for any service.
		return join(kvWrite(shared.BucketKillSwitch, all), kwadmin(shared.EndpointSeal, shared.EndpointHealth),
			[]string{shared.AuthnAdminSubject(shared.EndpointRegistry)})
	case RoleCustodian:
		// Read the sealed keyworkers' published keys and the pool's login
		// budget; store shares encrypted to a key (never a key record or
		// the budget: shared/infra/unseal).
		return join(kvWrite(shared.BucketUnseal, shared.UnsealSharesFilter(any1)), kwadmin(shared.EndpointHealth))
	case RoleAuditor:
		return join(readStream(shared.StreamAuditLog), readStream(shared.ObjectStream(shared.BucketAuditExport)),
			kvRead(shared.BucketAuditSigner),
			[]string{under(shared.SubjectAuditControlPrefix + ".")},
			kwadmin(shared.EndpointAuditPublicKey))
	}
	return nil
}

// PersonPermissions returns the permissions of person name holding roles.
// An invalid name or no role grants nothing.
func PersonPermissions(name string, roles []Role) Permissions {
	if !shared.ValidPersonName(name) || len(roles) == 0 {
		return none()
	}
	user := PersonUser(name)
	pub := join([]string{shared.JSAPIInfo},
		// Every person reads the registries (to name what they act on), the
		// roster and the requests waiting for approval, audits their own
		// actions (under their own subject only) and decides requests.
		kvRead(shared.BucketKeystores), kvRead(shared.BucketXKSKeys), kvRead(shared.BucketTenants),
		kvRead(shared.BucketPools), kvRead(shared.BucketPKI), kvRead(shared.BucketKillSwitch),
		kvRead(shared.BucketOperators), kvRead(shared.BucketAdmin), kvRead(shared.BucketPins),
		personAuditPrefixes(name), siblings(shared.StreamAudit, streamLookup),
		kwadmin(shared.EndpointApprove, shared.EndpointReject),
		[]string{shared.AuthnAdminSubject(shared.EndpointApprove), shared.AuthnAdminSubject(shared.EndpointReject)})
	for _, r := range roles {
		if !slices.Contains(Roles(), r) {
			return none()
		}
		pub = append(pub, rolePub(r)...)
	}
	slices.Sort(pub)
	pub = slices.Compact(pub)
	denyPub, denySub := denyPerson()
	return Permissions{Pub: pub, Sub: []string{shared.InboxSubjects(user)}, DenyPub: denyPub, DenySub: denySub}
}

// denyPerson is denied to every person whatever their roles allow: the
// capabilities the shared operator credential had and no person may have.
func denyPerson() (pub, sub []string) {
	svcDenyPub, svcDenySub := denyAlways()
	pub = join(svcDenyPub,
		[]string{shared.JSStreamLeaderStepdown + all, shared.JSConsumerLeaderStepdown + all},
		underSiblings(shared.SubjectWorkPrefix), []string{under(shared.SubjectReplyPrefix),
			under(shared.SubjectAuditRecordPrefix), under(shared.SubjectAuditCheckpointPrefix)},
		underSiblings(shared.SubjectRequestPrefix),
		// The signer state and the write-once stores are the services' alone.
		[]string{shared.SubjectKVPrefix + shared.BucketAuditSigner + "." + all, shared.SubjectKVPrefix + shared.BucketOperators + "." + all,
			shared.SubjectKVPrefix + shared.BucketAdmin + "." + all, shared.SubjectKVPrefix + shared.BucketEKTIndex + "." + all,
			shared.ObjectSubjects(shared.BucketEKTObjects), shared.ObjectSubjects(shared.BucketAuditExport)},
		otherAuditPrefixes(""))
	// Other people's audit subjects and inboxes are outside the allow lists.
	sub = join(svcDenySub, []string{under(shared.SubjectReplyPrefix)})
	return pub, sub
}
