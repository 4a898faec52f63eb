// A Node.js client built only from protos/: proves the contract is
// self-contained for other languages. Usage: node client.js PROTOS_DIR ADDRESS
// Prints one JSON object: {"info": GetInfoResponse, "logs": [LogEntry...]}.
"use strict";
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const [protosDir, address] = process.argv.slice(2);
const definition = protoLoader.loadSync(
  path.join(protosDir, "pycontainer/v1/management.proto"),
  { includeDirs: [protosDir], keepCase: true, longs: String, enums: String, defaults: true },
);
const pkg = grpc.loadPackageDefinition(definition).pycontainer.v1;
const client = new pkg.Management(address, grpc.credentials.createInsecure());
const deadline = () => new Date(Date.now() + 10000);

client.GetInfo({}, { deadline: deadline() }, (err, info) => {
  if (err) {
    console.error(`GetInfo failed: ${err.code} ${err.details}`);
    process.exit(3);
  }
  const logs = [];
  const stream = client.StreamLogs({ tail: 3, logger: "node.test" }, { deadline: deadline() });
  stream.on("data", (batch) => logs.push(...batch.entries));
  stream.on("error", (e) => {
    console.error(`StreamLogs failed: ${e.code} ${e.details}`);
    process.exit(3);
  });
  stream.on("end", () => {
    console.log(JSON.stringify({ info, logs }));
    client.close();
  });
});
