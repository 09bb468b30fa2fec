// Drives the published MindConnect Node.js SDK through a lost rotation answer.
//
//   node recovery.js <boarding-configuration.json> <state-dir> board|recover
//
// `board` onboards a SHARED_SECRET agent and gets a token. The Rust test then rotates the
// registration with the RAT the SDK saved and drops the answer, as a flaky link would.
// `recover` starts the agent again from its saved (pre-rotation) state: it gets a token with
// the secret it has, then rotates the way RenewToken does when the secret nears expiry (the
// server answers the repeated rotation with the lost answer), gets a token with the new
// secret, and round-trips its data source configuration. The last line of stdout is a JSON
// report; any failure exits non-zero.
"use strict";

const fs = require("fs");
const { MindConnectAgent } = require("@mindconnect/mindconnect-nodejs");

async function main() {
    const [configPath, stateDir, phase] = process.argv.slice(2);
    if (!configPath || !stateDir || !["board", "recover"].includes(phase)) {
        throw new Error("usage: node recovery.js <boarding-configuration.json> <state-dir> board|recover");
    }
    const configuration = JSON.parse(fs.readFileSync(configPath, "utf8"));
    fs.mkdirSync(stateDir, { recursive: true });
    const agent = new MindConnectAgent(configuration, undefined, stateDir);

    if (phase === "board") {
        await agent.OnBoard();
        const first = await agent.GetAgentToken();
        const r = agent._configuration.response;
        console.log(JSON.stringify({ secret: r.client_secret, rat: r.registration_access_token, tokens: [first] }));
        return;
    }

    const before = { ...agent._configuration.response };
    // The saved secret is the pre-rotation one; within the grace window it still works.
    const withOld = await agent.GetAgentToken();
    // RenewToken rotates within 25 hours of expiry; pretend an hour is left.
    agent._configuration.response.client_secret_expires_at = Math.floor(Date.now() / 1000) + 3600;
    const withNew = await agent.GetAgentToken();
    const after = agent._configuration.response;

    const dataSourceConfiguration = {
        configurationId: "recovery-config",
        dataSources: [
            {
                name: "PLC",
                description: "line 1",
                dataPoints: [
                    { id: "dp-voltage", name: "Voltage", type: "DOUBLE", unit: "V" },
                    { id: "dp-running", name: "Running", type: "BOOLEAN", unit: "", customData: { source: "DB1" } },
                ],
            },
        ],
    };
    const stored = await agent.PutDataSourceConfiguration(dataSourceConfiguration);
    const read = await agent.GetDataSourceConfiguration();
    const updated = await agent.PutDataSourceConfiguration({ ...dataSourceConfiguration, configurationId: "recovery-config-2" });

    console.log(
        JSON.stringify({
            secretBefore: before.client_secret,
            ratBefore: before.registration_access_token,
            secretAfter: after.client_secret,
            ratAfter: after.registration_access_token,
            tokens: [withOld, withNew],
            stored,
            read,
            updated,
        })
    );
}

main().catch((err) => {
    console.error(err && err.stack ? err.stack : err);
    process.exit(1);
});
