// fhir-kit-client (npm) against a familyview server: a transaction, a read, a search followed
// page by page, and the CapabilityStatement. Prints one JSON object for the pytest test to check.
// Usage: FHIR_BASE=http://127.0.0.1:8000/fhir FHIR_TOKEN=... FAMILY=Kitclient NHS=999... node interop.js
'use strict';
const Client = require('fhir-kit-client');

async function main() {
  const { FHIR_BASE, FHIR_TOKEN, FAMILY, NHS } = process.env;
  const client = new Client({ baseUrl: FHIR_BASE, bearerToken: FHIR_TOKEN });
  const out = {};

  const capability = await client.capabilityStatement();
  out.fhirVersion = capability.fhirVersion;
  out.capabilityTypes = capability.rest[0].resource.map((r) => r.type);

  const mother = 'urn:uuid:8d4c3e2a-0d36-4a3e-9b7e-2f1c5a6b7c01';
  const entries = [{
    fullUrl: mother,
    resource: {
      resourceType: 'Patient', gender: 'female', birthDate: '1994-06-01',
      identifier: [{ system: 'https://fhir.nhs.uk/Id/nhs-number', value: NHS }],
      name: [{ family: FAMILY, given: ['Kit'] }],
    },
    request: { method: 'POST', url: 'Patient' },
  }, {
    resource: {
      resourceType: 'RelatedPerson', patient: { reference: mother }, gender: 'male',
      identifier: [{ system: 'https://interop.example.nhs.uk/Id/rp', value: `rp-${NHS}` }],
      relationship: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-RoleCode', code: 'FTH' }] }],
      name: [{ family: FAMILY, given: ['Kieran'] }],
    },
    request: { method: 'POST', url: 'RelatedPerson' },
  }];
  for (let i = 0; i < 4; i += 1) {
    entries.push({
      resource: { resourceType: 'Patient', gender: 'female', name: [{ family: FAMILY, given: [`Sib${i}`] }] },
      request: { method: 'POST', url: 'Patient' },
    });
  }
  const response = await client.transaction({ body: { resourceType: 'Bundle', type: 'transaction', entry: entries } });
  out.transactionType = response.type;
  out.statuses = response.entry.map((e) => e.response.status);

  const [, patientId] = response.entry[0].response.location.split('/');
  const read = await client.read({ resourceType: 'Patient', id: patientId });
  out.readId = read.id;
  out.readNhs = read.identifier[0].value;
  const related = await client.read({ resourceType: 'RelatedPerson', id: response.entry[1].response.location.split('/')[1] });
  out.relatedPatient = related.patient.reference;

  out.pages = 0;
  out.searchIds = [];
  let page = await client.search({ resourceType: 'Patient', searchParams: { family: FAMILY, _count: 2 } });
  out.total = page.total;
  while (page) {
    out.pages += 1;
    (page.entry || []).forEach((e) => out.searchIds.push(e.resource.id));
    page = await client.nextPage(page);
  }
  out.patientId = patientId;
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

main().catch((err) => {
  const detail = err && err.response ? JSON.stringify(err.response.data) : String(err && err.stack);
  process.stderr.write(`fhir-kit-client interop failed: ${detail}\n`);
  process.exit(1);
});
