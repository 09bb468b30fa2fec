// Drives the published MindConnect Node.js SDK's operator side against a running Latchkey.
//
//   node operator.js <gateway-url> <tenant> <client-id> <client-secret> <entity-id>
//
// CredentialAuth gets an operator token with Basic auth from {gateway}/oauth/token, fetches
// {gateway}/token_keys and verifies the token with node `jsonwebtoken`; AgentManagementClient
// then creates an agent, reads it back and reads its boarding configuration. The server's CA
// comes from NODE_EXTRA_CA_CERTS. The last line of stdout is a JSON report the Rust test
// checks; any failure exits non-zero.
"use strict";

const { CredentialAuth, AgentManagementClient } = require("@mindconnect/mindconnect-nodejs");

async function main() {
    const [gateway, tenant, clientId, clientSecret, entityId] = process.argv.slice(2);
    if (!entityId) {
        throw new Error("usage: node operator.js <gateway> <tenant> <client-id> <client-secret> <entity-id>");
    }
    const basicAuth = "Basic " + Buffer.from(`${clientId}:${clientSecret}`).toString("base64");

    // The credential client on its own: token, then token_keys + jsonwebtoken.verify.
    const auth = new CredentialAuth(gateway, basicAuth, tenant);
    const token = await auth.GetToken();
    const validated = (await auth.RenewToken()) === true;

    // The agent management client with service credentials (it builds its own CredentialAuth).
    const client = new AgentManagementClient({ gateway, basicAuth, tenant });
    const created = await client.PostAgent({ name: `Node ${entityId}`, securityProfile: "SHARED_SECRET", entityId });
    const read = await client.GetAgent(entityId);
    const boarding = await client.GetBoardingConfiguration(entityId, { retry: 5 });
    const status = await client.GetOnboardingStatus(entityId);
    const agents = await client.GetAgents({ page: 0, size: 10 });

    console.log(
        JSON.stringify({
            token,
            validated,
            created: { id: created.id, eTag: created.eTag, securityProfile: created.securityProfile },
            read: { id: read.id, name: read.name },
            boarding,
            status: status.status,
            listed: (agents.content || []).map((a) => a.id),
        })
    );
}

main().catch((err) => {
    console.error(err && err.stack ? err.stack : err);
    process.exit(1);
});
