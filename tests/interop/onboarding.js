// Drives the published MindConnect Node.js SDK against a running Latchkey authority.
//
//   node onboarding.js <boarding-configuration.json> <state-dir>
//
// The boarding configuration is what `GET /api/agentmanagement/v3/agents/{id}/boarding/
// configuration` returned (SHARED_SECRET profile). The server's CA comes from
// NODE_EXTRA_CA_CERTS. The agent onboards, gets a token (the SDK fetches /oauth/token_key and
// verifies it), then rotates its secret the way the SDK does it on its own when the secret is
// within 25 hours of expiry, and gets and verifies a token with the new secret. The last line
// of stdout is a JSON report the Rust test checks; any failure exits non-zero.
"use strict";

const fs = require("fs");
const { MindConnectAgent } = require("@mindconnect/mindconnect-nodejs");

async function main() {
    const [configPath, stateDir] = process.argv.slice(2);
    if (!configPath || !stateDir) {
        throw new Error("usage: node onboarding.js <boarding-configuration.json> <state-dir>");
    }
    const configuration = JSON.parse(fs.readFileSync(configPath, "utf8"));
    fs.mkdirSync(stateDir, { recursive: true });
    const agent = new MindConnectAgent(configuration, undefined, stateDir);

    const onboarded = agent.IsOnBoarded() ? "ALREADY" : await agent.OnBoard();
    const before = { ...agent._configuration.response };

    // RenewToken: AquireToken + ValidateToken (token_key, jsonwebtoken.verify).
    const first = await agent.GetAgentToken();

    // The SDK rotates when client_secret_expires_at is within 25 hours; pretend an hour is
    // left (the server's secrets live 7 days) and let RenewToken do what it does in the field.
    agent._configuration.response.client_secret_expires_at = Math.floor(Date.now() / 1000) + 3600;
    const second = await agent.GetAgentToken();
    const after = agent._configuration.response;

    const rotated =
        after.client_secret !== before.client_secret &&
        after.registration_access_token !== before.registration_access_token &&
        after.client_id === before.client_id &&
        after.client_secret_expires_at > Math.floor(Date.now() / 1000) + 25 * 3600;

    // ValidateToken once more on the current token (throws if it does not verify).
    const validated = (await agent.ValidateToken()) === true;

    console.log(
        JSON.stringify({
            onboarded,
            validated,
            rotated,
            secretBefore: before.client_secret,
            secretAfter: after.client_secret,
            ratBefore: before.registration_access_token,
            ratAfter: after.registration_access_token,
            tokens: [first, second],
        })
    );
}

main().catch((err) => {
    console.error(err && err.stack ? err.stack : err);
    process.exit(1);
});
