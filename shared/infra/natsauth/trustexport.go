package natsauth

// Read access to a deployment's trust for writing nats-server configuration
// files (shared/infra/clusterinit): the operator JWT and the account JWTs
// the servers preload. None of these carry a seed.

// OperatorJWT returns the operator's JWT (trusted by every server).
func (t *Trust) OperatorJWT() string { return t.operatorJWT }

// SystemAccountKey returns the system account's public key and JWT.
func (t *Trust) SystemAccountKey() (pub, accountJWT string) {
	pub, _ = t.system.PublicKey()
	return pub, t.systemJWT
}

// AppAccountKey returns the application account's public key and JWT.
func (t *Trust) AppAccountKey() (pub, accountJWT string) {
	pub, _ = t.account.PublicKey()
	return pub, t.accountJWT
}
